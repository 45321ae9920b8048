"""The "fleet" corpus: what a fleet of agents writes while working on four projects for 60 days.

Each project is a workspace (``workspace:<project>``) with six services in look-alike pairs
(``payments-api`` / ``payments-apis``), error codes in look-alike pairs (``ERR_4417`` / ``ERR_4418``),
versions that share prefixes (``v2.3.1`` / ``v2.3.11``), people, hosts, tickets, pull requests and file
paths. Research, code, deploy and review agents (``research-1``, ``code-2`` ...) write incidents,
deploys, setting changes, decisions (with the discussion before them and the follow-up after), findings,
ownership, on-call rotations, code changes and reviews, and the user's preferences; most events are the
status chatter around them, which mentions the same services, codes and people without answering
anything. Events are written in timeline order, so "latest" questions have one right answer.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from . import Corpus, CorpusBuilder, Kind
from . import fleet_text as t

SEED = 4417
DAYS = 60
START = date(2025, 2, 3)
PROJECTS = [
    ("atlas", "Alice", "ATL"),
    ("borealis", "Bruno", "BOR"),
    ("cobalt", "Carmen", "COB"),
    ("dune", "Dmitri", "DUN"),
]
AGENTS = {
    "research": ["research-1", "research-2"],
    "code": ["code-1", "code-2", "code-3"],
    "deploy": ["deploy-1", "deploy-2"],
    "review": ["review-1"],
}
FILLER_PER_PROJECT = 640
# Days between events whose order a question depends on (the latest deploy, the current setting): the
# loader writes with many concurrent writers, which may swap events written close together.
GAP = 1.5
CHORES = [
    "clean up logging", "upgrade the base image", "tidy the config", "add request metrics", "remove dead code",
    "improve error messages", "document the environment variables", "speed up the build", "split a large module",
]  # fmt: skip
TOPICS = [
    "connection pooling", "idempotency", "rate limiting", "schema migrations", "observability", "feature flags",
    "caching", "retries", "zero-downtime deploys", "JWT validation", "session storage", "message brokers",
]  # fmt: skip
TOOLS = ["Kafka", "Postgres", "Redis", "Kubernetes", "Terraform", "OpenTelemetry", "Stripe", "Elasticsearch"]
LIBS = ["requests", "urllib3", "sqlalchemy", "pydantic", "boto3", "grpcio", "protobuf", "uvicorn", "orjson"]
WORDS = ["refund", "ledger", "token", "invoice", "retry", "cache", "parse", "export", "webhook", "session"]
FILLER = [
    "Starting on {ticket}: {chore} in {svc}.",
    "Running the {svc} test suite on {branch}: {n} passed, {k} skipped.",
    "CI is green for PR #{pr} ({svc}).",
    "Heartbeat: {svc} healthy in {region}, p99 {n} ms, error rate 0.{k}%.",
    "Reading the {tool} docs about {topic}.",
    "Opened {ticket} to track work to {chore} for {svc}.",
    "Standup: {person} is out on {weekday}; {person2} covers reviews.",
    "Synced with {person} about {svc}; nothing blocking.",
    "Dependency bump in {svc}: {lib} {lv1} -> {lv2}.",
    "Load test on {svc} staging: {n}0 rps sustained, p95 {k}0 ms.",
    "Saw {code} once on {svc} staging; transient, not reproducible.",
    t.STAGING,
    "Cleaned up {k} stale branches in the {svc} repo.",
    "Review queue: {k} PRs waiting, the oldest is PR #{pr}.",
    "Rebased {branch} onto main; {k} conflicts in {path}.",
    "{host} CPU at {pct}% during the {hh}:00 batch window.",
    "Drafted notes for {user} on {topic}.",
    "Pinged {person} about {ticket}; waiting for an answer.",
    "Cache hit ratio on {svc} is {pct}% today.",
    "Nightly backup of {svc} finished in {k} min ({n} GB).",
    "Flaky test in {svc}: test_{word}_{word2} failed once on CI, passed on retry.",
    "Updated the {svc} runbook: how to {chore}.",
    "Summary for {user}: {k} PRs merged and {n} tickets closed yesterday.",
    "Comparing notes on {topic} with {person} before touching {svc}.",
]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]


@dataclass
class Service:
    name: str
    host: str
    desc: str
    pkg: str
    region: str
    versions: list[str] = field(default_factory=list)


class Project:
    """One workspace: its services, people, and the counters that keep tickets and PRs unique."""

    def __init__(self, rng: random.Random, b: CorpusBuilder, name: str, user: str, prefix: str, pairs: list) -> None:
        self.rng, self.b, self.name, self.user, self.prefix = rng, b, name, user, prefix
        self.scope = f"workspace:{name}"
        self.start = START + timedelta(days=rng.randrange(0, 20))
        self.services: list[Service] = []
        for pair in pairs:
            for svc, host, desc, pkg in pair:
                self.services.append(Service(svc, f"{host}-prod-{rng.randint(1, 9)}", desc, pkg, rng.choice(t.REGIONS)))
        self.people = rng.sample(t.PEOPLE, 6)
        self.codes: list[str] = []
        self._first_ticket = self._ticket = rng.randrange(1000, 4000)
        self._first_pr = self._pr = rng.randrange(200, 900)
        self._tags = 0

    def date(self, day: float) -> str:
        return (self.start + timedelta(days=int(day))).isoformat()

    def ticket(self) -> str:
        self._ticket += self.rng.randint(1, 40)
        return f"{self.prefix}-{self._ticket}"

    def pr(self) -> int:
        self._pr += self.rng.randint(1, 9)
        return self._pr

    def old_ticket(self) -> str:
        return f"{self.prefix}-{self.rng.randint(self._first_ticket, self._ticket)}"

    def old_pr(self) -> int:
        return self.rng.randint(self._first_pr, self._pr)

    def agent(self, kind: str) -> tuple[str, str]:
        return self.rng.choice(AGENTS[kind]), kind

    def add(
        self, day: float, kind: str, content: str, *, event_type: str = "observation", importance: float = 0.6
    ) -> str:
        """Writes an event that answers a question; returns its tag."""
        self._tags += 1
        tag = f"{self.name}/{self._tags}"
        self.note(day, kind, content, event_type=event_type, importance=importance, tag=tag)
        return tag

    def note(
        self,
        day: float,
        kind: str,
        content: str,
        *,
        event_type: str = "status",
        importance: float = 0.3,
        tag: str | None = None,
    ) -> bool:
        """Writes an event (False if its content was already written in the project)."""  # fmt: skip
        agent_id, agent_type = self.agent(kind)
        meta = {"project": self.name, "day": self.date(day)}
        return self.b.add(
            self.scope, day + self.rng.random() * 0.9, agent_id, agent_type, content, event_type=event_type,
            importance=importance, metadata=meta, tag=tag,
        )  # fmt: skip

    def ask(self, kind: Kind, text: str, *tags: str) -> None:
        self.b.ask(self.scope, text, kind, *tags)


def build(seed: int = SEED) -> Corpus:
    rng = random.Random(seed)
    b = CorpusBuilder("fleet")
    pairs = rng.sample(t.SERVICE_PAIRS, 3 * len(PROJECTS))
    for i, (name, user, prefix) in enumerate(PROJECTS):
        p = Project(rng, b, name, user, prefix, pairs[3 * i : 3 * i + 3])
        oncall = rotations(p)
        incidents(p, oncall)
        deploys(p)
        settings(p)
        decisions(p)
        findings(p)
        owners(p)
        changes(p)
        preferences(p)
        filler(p, FILLER_PER_PROJECT)
    return b.build()


def rotations(p: Project) -> list[str]:
    tags = []
    for week in range(DAYS // 7 + 1):
        p1, p2 = p.rng.sample(p.people, 2)
        tags.append(p.add(week * 7, "deploy", t.ONCALL.format(week=week + 1, p1=p1, p2=p2), importance=0.5))
    p.ask("temporal", p.rng.choice(t.Q_ONCALL_NOW), tags[-1])
    return tags


def look_alike_codes(rng: random.Random, pairs: int) -> list[str]:
    codes: list[str] = []
    while len(codes) < 2 * pairs:
        base = rng.randrange(1000, 9899)
        text = str(base)
        twin = base + 1 if rng.random() < 0.5 else int(text[:2] + text[3] + text[2])
        if twin != base and f"ERR_{base}" not in codes and f"ERR_{twin}" not in codes:
            codes += [f"ERR_{base}", f"ERR_{twin}"]
    return codes


def incidents(p: Project, oncall: list[str]) -> None:
    rng = p.rng
    p.codes = look_alike_codes(rng, 5)
    causes = rng.sample(t.CAUSES, len(p.codes))
    asked_oncall = False
    for i, code in enumerate(p.codes):
        pair = p.services[(i // 2 % 3) * 2 : (i // 2 % 3) * 2 + 2]
        svc = pair[0] if i % 2 == 0 else rng.choice(pair)
        day = rng.uniform(2, DAYS - 10)
        table, col = rng.choice(t.TABLES)
        fill = {
            "dep": rng.choice(t.DEPENDENCIES), "a": rng.randint(3, 90), "b": rng.randint(2, 40), "table": table,
            "col": col, "flag": rng.choice(t.FLAGS),
        }  # fmt: skip
        cause, fix = (s.format(**fill) for s in causes[i])
        ticket, pr = p.ticket(), p.pr()
        path = rng.choice(t.CHANGES)[0].format(pkg=svc.pkg)
        values = {
            "code": code, "svc": svc.name, "host": svc.host, "region": svc.region, "n": rng.randint(20, 900),
            "m": rng.randint(2, 30), "endpoint": rng.choice(t.ENDPOINTS), "oncall": rng.choice(p.people),
            "hh": f"{rng.randint(0, 23):02d}", "mm": f"{rng.randint(0, 59):02d}", "cause": cause, "fix": fix,
            "ticket": ticket, "pr": pr, "path": path,
        }  # fmt: skip
        detect = p.add(day, "deploy", rng.choice(t.INCIDENT_DETECT).format(**values), event_type="alert")
        why = p.add(day + 0.5, rng.choice(["research", "code"]), rng.choice(t.INCIDENT_CAUSE).format(**values),
                    event_type="finding", importance=0.8)  # fmt: skip
        fixed = p.add(day + rng.uniform(1, 3), "code", rng.choice(t.INCIDENT_FIX).format(**values),
                      event_type="agent_result", importance=0.8)  # fmt: skip
        p.note(day + rng.uniform(4, 6), "deploy", t.INCIDENT_QUIET.format(**values), importance=0.5)
        for _ in range(rng.randint(1, 3)):
            again = {**values, "n": rng.randint(1, 40)}
            p.note(day + rng.uniform(-1, 9), "deploy", rng.choice(t.INCIDENT_AGAIN).format(**again))
        fmt = {"code": code, "svc": svc.name}
        first, second = rng.sample(["cause", "both", "pr"], 2)
        for kind in (first, second):
            if kind == "cause":
                p.ask("identifier", rng.choice(t.Q_INCIDENT_CAUSE).format(**fmt), why)
            elif kind == "both":
                p.ask("multi-event", rng.choice(t.Q_INCIDENT_BOTH).format(**fmt), why, fixed)
            else:
                p.ask("identifier", rng.choice(t.Q_INCIDENT_PR).format(**fmt), fixed)
        week = int(day // 7)
        if not asked_oncall and week + 1 < len(oncall) and day - week * 7 > 1:
            p.ask("temporal", t.Q_ONCALL_AT.format(code=code), oncall[week], detect)
            asked_oncall = True


def deploys(p: Project) -> None:
    rng = p.rng
    plans: dict[str, list[float]] = {}
    for a, twin in zip(p.services[::2], p.services[1::2], strict=True):
        major, minor = rng.randint(1, 4), rng.randint(0, 8)
        a.versions = [f"v{major}.{minor}.{n}" for n in (1, rng.randint(2, 5), 11)] + [f"v{major}.{minor + 1}.0"]
        twin.versions = [f"v{major}.{minor}.{n}" for n in (1, rng.randint(6, 9), 12)]
        for svc in (a, twin):
            plans[svc.name] = spread(rng, len(svc.versions), 1, DAYS - 3)
    release_day = float(rng.randint(10, DAYS - 10))
    for name in rng.sample(sorted(plans), 2):
        plans[name] = spread(rng, len(plans[name]), 1, DAYS - 3, fixed=release_day)
    on_day: dict[str, list[str]] = {}
    history: dict[str, list[tuple[str, str]]] = {}
    rollback_svc = rng.choice(p.services[::2])
    for svc in p.services:
        for ver, day in zip(svc.versions, plans[svc.name], strict=True):
            values = {
                "svc": svc.name, "ver": ver, "region": svc.region, "date": p.date(day), "pct": rng.choice((5, 10, 25)),
                "m": rng.randint(10, 60), "ticket": p.ticket(), "person": rng.choice(p.people),
            }  # fmt: skip
            tag = p.add(day, "deploy", rng.choice(t.DEPLOY).format(**values), event_type="deploy", importance=0.7)
            history.setdefault(svc.name, []).append((ver, tag))
            on_day.setdefault(p.date(day), []).append(tag)
        if svc is rollback_svc:
            day = plans[svc.name][-1] + GAP
            (old, _), (new, deployed) = history[svc.name][-2:]
            code = f"ERR_{rng.randrange(1000, 9999)}"
            text = t.ROLLBACK.format(date=p.date(day), svc=svc.name, new=new, old=old, code=code)
            rolled = p.add(day, "deploy", text, event_type="deploy", importance=0.8)
            history[svc.name].append((old, rolled))
            p.ask("multi-event", rng.choice(t.Q_ROLLBACK).format(svc=svc.name, new=new), deployed, rolled)
    for svc in p.services:
        p.ask("temporal", rng.choice(t.Q_DEPLOY_LATEST).format(svc=svc.name), history[svc.name][-1][1])
    for svc in rng.sample(p.services, 2):
        p.ask("temporal", rng.choice(t.Q_DEPLOY_FIRST).format(svc=svc.name), history[svc.name][0][1])
    for svc in rng.sample(p.services, 4):
        ver, tag = rng.choice(history[svc.name][:-1])
        p.ask("identifier", rng.choice(t.Q_DEPLOY_WHO).format(svc=svc.name, ver=ver), tag)
    p.ask("temporal", rng.choice(t.Q_DEPLOY_DAY).format(date=p.date(release_day)), *on_day[p.date(release_day)])


def spread(rng: random.Random, n: int, low: float, high: float, *, fixed: float | None = None) -> list[float]:
    """``n`` ascending days in [low, high], ``GAP`` apart (one of them ``fixed`` when given)."""
    while True:
        days = sorted(
            [rng.uniform(low, high) for _ in range(n - (fixed is not None))] + ([fixed] if fixed is not None else [])
        )
        if all(b - a >= GAP for a, b in itertools.pairwise(days)):
            return days


def settings(p: Project) -> None:
    rng = p.rng
    for name, paras, values, unit in rng.sample(t.SETTINGS, 5):
        svc = rng.choice(p.services)
        scale = rng.choice((1, 2)) if unit != " GB" else 1
        steps = [f"{v * scale:,}{unit}" for v in values[: rng.choice((2, 3))]]
        days = spread(rng, len(steps), 1, DAYS - 2)
        tags = [p.add(days[0], "deploy", t.SETTING_FIRST.format(svc=svc.name, setting=name, value=steps[0]))]
        for j in range(1, len(steps)):
            text = rng.choice(t.SETTING_CHANGE).format(
                svc=svc.name, setting=name, old=steps[j - 1], value=steps[j], reason=rng.choice(t.SETTING_REASONS)
            )
            tags.append(p.add(days[j], rng.choice(["deploy", "code"]), text, event_type="decision", importance=0.7))
        para = rng.choice(paras)
        p.ask("temporal", rng.choice(t.Q_SETTING_NOW).format(para=para, svc=svc.name), tags[-1])
        if rng.random() < 0.5:
            p.ask("multi-event", rng.choice(t.Q_SETTING_HISTORY).format(para=para, svc=svc.name), *tags)
        else:
            q = rng.choice(t.Q_SETTING_WHY).format(para=para, svc=svc.name, value=steps[1])
            p.ask("single-fact", q, tags[1])


def decisions(p: Project) -> None:
    rng = p.rng
    for j, (topic, text, discussion, follow_up, questions, follow_q) in enumerate(rng.sample(t.DECISIONS, 6)):
        day = rng.uniform(4, DAYS - 20)
        person = rng.choice(p.people)
        p.note(day - rng.uniform(0.5, 3), "research", discussion, event_type="question", importance=0.5)
        tags = [p.add(day, "research", rng.choice(t.DECISION).format(person=person, text=text),
                      event_type="decision", importance=0.9)]  # fmt: skip
        if rng.random() < 0.3:
            tags.append(p.add(day + rng.uniform(1, 4), "review", f"Recap for the fleet: we {text} ({person}'s call).",
                              event_type="decision", importance=0.7))  # fmt: skip
        done = p.add(day + rng.uniform(5, 15), "code", follow_up, event_type="agent_result", importance=0.7)
        p.ask("single-fact", rng.choice(questions), *tags)
        if j < 3:
            p.ask("multi-event", follow_q, tags[0], done)
        elif j < 5:
            p.ask("identifier", t.Q_DECISION_PERSON.format(person=person, topic=topic), *tags)


def findings(p: Project) -> None:
    rng = p.rng
    for text, questions in rng.sample(t.FINDINGS, 6):
        filled = text.format(a=rng.randint(11, 95), b=rng.randint(2, 9), c=rng.randint(2, 30))
        tag = p.add(rng.uniform(1, DAYS - 1), "research", filled, event_type="finding", importance=0.7)
        p.ask("single-fact", rng.choice(questions), tag)


def owners(p: Project) -> None:
    rng = p.rng
    owned: dict[str, list[str]] = {}
    for svc in p.services:
        person = rng.choice(p.people)
        tag = p.add(rng.uniform(0, 6), "research", rng.choice(t.OWNER).format(person=person, svc=svc.name))
        owned.setdefault(person, []).append(tag)
        svc_owner = (svc, tag)
        if len(owned) <= 3 and len(owned[person]) == 1:
            p.ask("single-fact", rng.choice(t.Q_OWNER).format(desc=svc_owner[0].desc), tag)
    for person in rng.sample(sorted(owned), 2):
        p.ask("identifier", rng.choice(t.Q_OWNED_BY).format(person=person), *owned[person])


def changes(p: Project) -> None:
    rng = p.rng
    for path, change, topic in rng.sample(t.CHANGES, 6):
        svc = rng.choice(p.services)
        path = path.format(pkg=svc.pkg)
        pr = p.pr()
        day = rng.uniform(1, DAYS - 4)
        made = p.add(day, "code", rng.choice(t.CHANGE).format(path=path, change=change, pr=pr),
                     event_type="agent_result", importance=0.6)  # fmt: skip
        reviewed = p.add(day + rng.uniform(0.5, 2), "review", t.REVIEW.format(pr=pr, verdict=rng.choice(t.REVIEWS)),
                         event_type="review", importance=0.6)  # fmt: skip
        for kind in rng.sample(["path", "review", "pr"], 2):
            if kind == "path":
                p.ask("identifier", rng.choice(t.Q_CHANGE_PATH).format(path=path), made)
            elif kind == "review":
                p.ask("multi-event", rng.choice(t.Q_CHANGE_REVIEW).format(topic=topic), made, reviewed)
            else:
                p.ask("identifier", rng.choice(t.Q_REVIEW).format(pr=pr), reviewed)


def preferences(p: Project) -> None:
    for text, question in p.rng.sample(t.PREFERENCES, 3):
        tag = p.add(
            p.rng.uniform(0, DAYS), "research", text.format(user=p.user), event_type="preference", importance=0.9
        )
        p.ask("single-fact", question, tag)


def filler(p: Project, count: int) -> None:
    rng = p.rng
    written = 0
    while written < count:
        svc = rng.choice(p.services)
        person, person2 = rng.sample(p.people, 2)
        values = {
            "svc": svc.name, "ticket": p.old_ticket(), "chore": rng.choice(CHORES),
            "branch": f"feat/{rng.choice(WORDS)}-{rng.randint(1, 99)}", "n": rng.randint(12, 980),
            "k": rng.randint(1, 19), "pr": p.old_pr(),
            "region": svc.region, "tool": rng.choice(TOOLS), "topic": rng.choice(TOPICS), "person": person,
            "person2": person2, "weekday": rng.choice(WEEKDAYS), "lib": rng.choice(LIBS),
            "lv1": f"{rng.randint(0, 3)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
            "lv2": f"{rng.randint(0, 3)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}", "code": rng.choice(p.codes),
            "ver": rng.choice(svc.versions or ["v1.0.0"]), "path": rng.choice(t.CHANGES)[0].format(pkg=svc.pkg),
            "host": svc.host, "hh": f"{rng.randint(0, 23):02d}", "user": p.user, "word": rng.choice(WORDS),
            "word2": rng.choice(WORDS), "pct": rng.randint(3, 99),
        }  # fmt: skip
        text = rng.choice(FILLER).format(**values)
        kind = rng.choice(list(AGENTS))
        written += p.note(rng.uniform(0, DAYS), kind, text, importance=rng.uniform(0.1, 0.5))
