"""The "conversations" corpus: six pairs of friends chatting over twenty sessions each (about nine months).

Each pair is a user scope (``user:maya-hannah``); each turn is an event written by its speaker,
``"Maya: ..."``. Between greetings, small talk and goodbyes, each friend mentions their job (and later a
new one), where they grew up, a pet, a sibling's move and wedding, children, two hobbies with progress
over time, trips, the books they read, an injury and its recovery, and a plan with a date; the other
friend reacts, often repeating the name or place. Questions ask what one friend said, in other words.
Built independently of the fleet corpus (other vocabulary, other shapes), so a search tuned to one shows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

from . import Corpus, CorpusBuilder, Kind
from . import conversations_text as t

SEED = 1729
SESSIONS = 24
START = date(2023, 1, 9)
CHITCHAT_PER_SESSION = 7


@dataclass(frozen=True)
class Line:
    speaker: str
    text: str
    tag: str | None


class Chat:
    """One pair's sessions: beats (short exchanges) are placed in sessions, then emitted in order."""

    def __init__(self, rng: random.Random, b: CorpusBuilder, first: str, second: str) -> None:
        self.rng, self.b, self.names = rng, b, (first, second)
        self.scope = f"user:{first.lower()}-{second.lower()}"
        self.beats: list[list[list[Line]]] = [[] for _ in range(SESSIONS)]
        day, self.dates = START + timedelta(days=rng.randrange(0, 30)), []
        for _ in range(SESSIONS):
            self.dates.append(day)
            day += timedelta(days=rng.randint(6, 20))
        self._tags = 0

    def other(self, name: str) -> str:
        return self.names[1] if name == self.names[0] else self.names[0]

    def later_date(self, session: int) -> str:
        when = self.dates[session] + timedelta(days=self.rng.randint(10, 60))
        return f"{t.MONTHS[when.month - 1]} {when.day}"

    def say(self, session: int, speaker: str, text: str, *, reply: str | None = None, then: str | None = None) -> str:
        """A beat: ``speaker`` says ``text`` (the evidence), the other one replies (``reply`` or a generic
        reaction), and ``speaker`` may go on with ``then``; returns the evidence tag."""
        self._tags += 1
        tag = f"{self.scope}/{self._tags}"
        lines = [Line(speaker, text, tag)]
        lines.append(Line(self.other(speaker), reply or self.phrase(t.REACTIONS, t.FOLLOW_UPS), None))
        if then:
            lines.append(Line(speaker, then, None))
        self.beats[session].append(lines)
        return tag

    def chatter(self, session: int, speaker: str, text: str) -> None:
        """A beat that answers nothing (a mention, an echo)."""
        self.beats[session].append([Line(speaker, text, None)])

    def ask(self, kind: Kind, text: str, *tags: str) -> None:
        self.b.ask(self.scope, text, kind, *tags)

    def sessions(self, low: int, high: int, k: int) -> list[int]:
        """``k`` distinct sessions in [low, high), ascending."""
        return sorted(self.rng.sample(range(low, high), k))

    def emit(self) -> None:
        rng = self.rng
        for s in range(SESSIONS):
            opener = rng.choice(self.names)
            lines = [Line(opener, rng.choice(t.GREETINGS).format(b=self.other(opener)), None),
                     Line(self.other(opener), self.phrase(t.REPLIES, t.REPLY_TAILS), None)]  # fmt: skip
            chunks = list(self.beats[s]) + [self.small_talk() for _ in range(CHITCHAT_PER_SESSION)]
            rng.shuffle(chunks)
            for chunk in chunks:
                lines += chunk
            closer = rng.choice(self.names)
            lines.append(Line(closer, rng.choice(t.CLOSERS).format(b=self.other(closer)), None))
            meta = {"session": s + 1, "date": self.dates[s].isoformat()}
            for i, line in enumerate(lines):
                self.b.add(
                    self.scope, s + i / 1000, line.speaker.lower(), "person", f"{line.speaker}: {line.text}",
                    event_type="message", importance=0.5, metadata=meta, tag=line.tag,
                )  # fmt: skip

    def small_talk(self) -> list[Line]:
        rng = self.rng
        speaker = rng.choice(self.names)
        text = rng.choice(t.CHITCHAT).format(
            weather=rng.choice(t.WEATHER), food=rng.choice(t.FOODS), street=rng.choice(t.STREETS),
            verdict=rng.choice(t.VERDICTS), show=rng.choice(t.SHOWS), n=rng.randint(3, 60), k=rng.randint(2, 11),
            late=rng.randint(10, 12), early=rng.randint(6, 9),
        )  # fmt: skip
        return [Line(speaker, text, None), Line(self.other(speaker), self.phrase(t.CHIT_REPLIES, t.CHIT_TAILS), None)]

    def phrase(self, heads: list[str], tails: list[str]) -> str:
        return f"{self.rng.choice(heads)} {self.rng.choice(tails)}".strip()


def build(seed: int = SEED) -> Corpus:
    rng = random.Random(seed)
    b = CorpusBuilder("conversations")
    names = list(t.NAMES)
    rng.shuffle(names)
    pools = {
        key: rng.sample(pool, len(names))
        for key, pool in (("job", t.JOBS), ("home", t.HOMETOWNS), ("pet", t.PETS), ("sibling", t.SIBLINGS))
    }
    kids = list(t.KIDS)
    rng.shuffle(kids)
    for i in range(0, len(names), 2):
        chat = Chat(rng, b, names[i], names[i + 1])
        for j in (i, i + 1):
            me = names[j]
            job(chat, me, pools["job"][j])
            hometown(chat, me, pools["home"][j])
            pet(chat, me, pools["pet"][j])
            sibling(chat, me, pools["sibling"][j])
            if j % 2 == 0 or rng.random() < 0.3:
                children(chat, me, [kids.pop(), kids.pop()])
            for hobby in rng.sample(sorted(t.HOBBIES), 2):
                pastime(chat, me, t.HOBBIES[hobby])
            trips(chat, me)
            books(chat, me)
            if rng.random() < 0.5:
                injury(chat, me)
            plan(chat, me)
        chat.emit()
    return b.build()


def job(chat: Chat, me: str, what: tuple[str, str, str]) -> None:
    title, place, new = what
    first, second = chat.sessions(0, 6, 1)[0], chat.sessions(11, SESSIONS, 1)[0]
    was = chat.say(first, me, f"Work's been hectic. I'm a {title} at {place}, and we're short-staffed again.",
                   then="Mostly I love it though, the people make it.")  # fmt: skip
    now = chat.say(second, me, chat.rng.choice(["Big news: I'm now {new}!", "Starting next month I'll be {new}."])
                   .format(new=new))  # fmt: skip
    options: list[tuple[Kind, str, tuple[str, ...]]] = [
        ("single-fact", f"What does {me} do for a living?", (was,)),
        ("temporal", f"What is {me}'s job now?", (now,)),
        ("multi-event", f"How has {me}'s career changed over the year?", (was, now)),
    ]
    for kind, text, tags in chat.rng.sample(options, 2):
        chat.ask(kind, text, *tags)


def hometown(chat: Chat, me: str, where: tuple[str, str]) -> None:
    town, landmark = where
    s = chat.rng.randrange(0, SESSIONS)
    tag = chat.say(s, me, f"I grew up in {town}, right by {landmark}.", reply=f"I've always wanted to see {town}!")
    chat.ask("single-fact", chat.rng.choice([f"Where is {me} from originally?", f"Where did {me} grow up?"]), tag)


def pet(chat: Chat, me: str, which: tuple[str, str]) -> None:
    name, species = which
    adopted, *mentions = chat.sessions(0, SESSIONS - 4, 3)
    tag = chat.say(adopted, me, f"We adopted a {species} this weekend! We named her {name}.")
    chat.chatter(mentions[0], me, f"{name} chewed through my charger cable again.")
    chat.chatter(mentions[1], chat.other(me), f"How's {name} doing, still causing chaos?")
    if chat.rng.random() < 0.5:
        chat.ask("identifier", f"Who is {name}?", tag)
    else:
        chat.ask("temporal", f"When did {me} get {name}?", tag)


def sibling(chat: Chat, me: str, who: tuple[str, str]) -> None:
    rng = chat.rng
    name, relation = who
    moved, wedding = chat.sessions(0, SESSIONS, 2)
    where = chat.say(moved, me, f"My {relation} {name} just moved to {rng.choice(t.CITIES)} for "
                                f"{rng.choice(t.MOVE_REASONS)}.", reply=f"Say hi to {name} for me!")  # fmt: skip
    when = chat.say(wedding, me, f"{name} is getting married at {rng.choice(t.WEDDING_VENUES)} on "
                                 f"{chat.later_date(wedding)}!")  # fmt: skip
    chat.ask("identifier", f"Where does {name} live now?", where)
    chat.ask("temporal", f"When is {name}'s wedding?", when)


def children(chat: Chat, me: str, names: list[str]) -> None:
    tags = []
    for s, name in zip(chat.sessions(0, SESSIONS, 2), names, strict=True):
        news = chat.rng.choice(t.KID_NEWS).format(age=chat.rng.randint(3, 9))
        tags.append(chat.say(s, me, f"My kid {name} {news}."))
    chat.ask(
        "multi-event", chat.rng.choice([f"What are the names of {me}'s children?", f"Who are {me}'s kids?"]), *tags
    )


def pastime(chat: Chat, me: str, hobby: t.Hobby) -> None:
    rng = chat.rng
    venue = rng.choice(hobby.venues)
    start, *later = chat.sessions(0, SESSIONS, 4)
    began = chat.say(start, me, hobby.start.format(venue=venue))
    items = [hobby.items[k] for k in sorted(rng.sample(range(len(hobby.items)), len(later)))]
    progress = [
        chat.say(s, me, rng.choice(hobby.progress).format(item=item)) for s, item in zip(later, items, strict=True)
    ]
    options: list[tuple[Kind, str, tuple[str, ...]]] = [
        ("single-fact", hobby.q_start.format(a=me), (began,)),
        ("identifier", hobby.q_venue.format(a=me, venue=venue), (began,)),
        ("multi-event", hobby.q_items.format(a=me), tuple(progress)),
        ("temporal", hobby.q_latest.format(a=me), (progress[-1],)),
    ]
    for kind, text, tags in rng.sample(options, 3):
        chat.ask(kind, text, *tags)


def trips(chat: Chat, me: str) -> None:
    rng = chat.rng
    tags, places = [], rng.sample(t.TRIPS, 2)
    for s, (dest, highlight) in zip(chat.sessions(2, SESSIONS, 2), places, strict=True):
        who = rng.choice(t.COMPANIONS)
        text = rng.choice(t.TRIP).format(dest=dest, who=who, highlight=highlight)
        tags.append(chat.say(s, me, text, reply=f"{dest}! Jealous. I've never been."))
    chat.ask("single-fact", t.Q_TRIP_WHERE.format(a=me, who=who), tags[1])
    chat.ask("identifier", t.Q_TRIP_BEST.format(a=me, dest=places[0][0]), tags[0])
    chat.ask("multi-event", t.Q_TRIPS.format(a=me), *tags)


def books(chat: Chat, me: str) -> None:
    rng = chat.rng
    read = rng.sample(t.BOOKS, 3)
    tags = [
        chat.say(s, me, t.BOOK.format(title=title, author=author, comment=rng.choice(t.BOOK_COMMENTS)))
        for s, (title, author) in zip(chat.sessions(0, SESSIONS, 3), read, strict=True)
    ]
    chat.ask("temporal", rng.choice(t.Q_BOOK_NOW).format(a=me), tags[-1])
    k = rng.randrange(0, 2)
    chat.ask("identifier", t.Q_BOOK_OPINION.format(a=me, title=read[k][0]), tags[k])


def injury(chat: Chat, me: str) -> None:
    what, part, how = chat.rng.choice(t.INJURIES)
    hurt, healed = chat.sessions(0, SESSIONS, 2)
    tags = [chat.say(hurt, me, t.INJURY.format(injury=what, how=how)), chat.say(healed, me, t.HEALED.format(part=part))]
    if chat.rng.random() < 0.5:
        chat.ask("temporal", t.Q_INJURY_NOW.format(a=me, part=part), tags[1])
    else:
        chat.ask("multi-event", t.Q_INJURY_BOTH.format(a=me, part=part), *tags)


def plan(chat: Chat, me: str) -> None:
    k = chat.rng.randrange(len(t.PLANS))
    s = chat.rng.randrange(0, SESSIONS)
    tag = chat.say(s, me, t.PLANS[k].format(date=chat.later_date(s)))
    chat.ask("temporal", t.Q_PLANS[k].format(a=me), tag)
