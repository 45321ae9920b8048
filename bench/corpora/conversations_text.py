"""Vocabulary of the conversations corpus: two friends catching up over months (work, family, pets,
hobbies, trips, books, plans, mishaps). Independent of the fleet corpus: other words, other shapes."""

from __future__ import annotations

from dataclasses import dataclass

NAMES = ["Maya", "Jonas", "Leila", "Sam", "Grace", "Tobias", "Noor", "Elliot", "Rosa", "Dev", "Hannah", "Marco"]
# (job, workplace, the job after a promotion or a move)
JOBS = [
    ("pediatric nurse", "St. Brigid's Hospital", "charge nurse on the night shift"),
    ("chemistry teacher", "Westfield High", "head of the science department"),
    ("sous-chef", "a bistro called Fennel", "head chef at Fennel"),
    ("landscape architect", "Greenline Studio", "partner at Greenline"),
    ("city bus driver", "the number 14 route", "dispatcher at the depot"),
    ("veterinary technician", "the Pawsitive Care clinic", "practice manager at Pawsitive Care"),
    ("librarian", "the Maple Street branch library", "branch manager at Maple Street"),
    ("physiotherapist", "a sports clinic downtown", "physio for the city's rugby team"),
    ("carpenter", "a timber-frame workshop", "owner of my own joinery shop"),
    ("wedding photographer", "my own studio, Lumen & Lace", "photo editor at a travel magazine"),
    ("air traffic controller", "the regional airport", "trainer for new controllers"),
    ("pharmacist", "the Oakridge pharmacy", "lead pharmacist at the hospital"),
]  # fmt: skip
HOMETOWNS = [
    ("Porto", "the river with all the bridges"), ("Duluth", "Lake Superior"), ("Cork", "the English Market"),
    ("Tucson", "the desert full of saguaros"), ("Gdańsk", "the old shipyard"), ("Valparaíso", "the funiculars"),
    ("Bergen", "the fish market"), ("Savannah", "the squares with the mossy oaks"), ("Hobart", "Mount Wellington"),
    ("Asheville", "the Blue Ridge"), ("Galway", "the Salthill promenade"), ("Trieste", "the windy harbour"),
]  # fmt: skip
PETS = [
    ("Biscuit", "beagle puppy"), ("Mochi", "grey kitten"), ("Pickles", "rescue greyhound"), ("Juniper", "corgi"),
    ("Ziggy", "bearded dragon"), ("Olive", "tabby cat"), ("Taco", "chihuahua mix"), ("Pepper", "border collie"),
    ("Nimbus", "lop-eared rabbit"), ("Waffles", "golden retriever"), ("Sprout", "tortoise"), ("Luna", "husky"),
]  # fmt: skip
SIBLINGS = [("Lena", "sister"), ("Marcus", "brother"), ("Ines", "sister"), ("Felix", "brother"), ("Tamsin", "sister"),
            ("Rafael", "brother"), ("Yuki", "sister"), ("Oskar", "brother"), ("Bea", "sister"), ("Callum", "brother"),
            ("Zara", "sister"), ("Idris", "brother")]  # fmt: skip
COMPANIONS = ["Ada", "Luis", "Priti", "Kofi", "Mei", "Anders", "Tove", "Ramón"]
KIDS = ["Theo", "Ava", "Milo", "Iris", "Jasper", "Nell", "Leo", "Poppy", "Finn", "Ruby", "Arlo", "Hazel", "Otis",
        "Wren", "Mabel", "Rory", "Elsie", "Jude", "Clara", "Ezra", "Maisie", "Rowan", "Ivy", "Silas"]  # fmt: skip
CITIES = ["Vancouver", "Lisbon", "Denver", "Edinburgh", "Melbourne", "Montreal", "Austin", "Copenhagen", "Osaka"]
MOVE_REASONS = [
    "a job at a robotics startup", "grad school in marine biology", "a residency at the children's hospital",
    "a teaching job", "a fresh start after the breakup", "a spot in a design apprenticeship",
]  # fmt: skip
WEDDING_VENUES = ["a vineyard outside town", "the botanical gardens", "an old barn by the lake", "a lighthouse"]
KID_NEWS = [
    "turned {age} on Saturday and we threw a dinosaur party", "lost a first tooth at breakfast",
    "started kindergarten and cried for about four minutes", "won the school spelling bee",
    "learned to ride a bike without training wheels", "got the lead in the school play",
]  # fmt: skip
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]  # fmt: skip


@dataclass(frozen=True)
class Hobby:
    start: str  # {venue}
    venues: tuple[str, ...]
    progress: tuple[str, ...]  # {item}
    items: tuple[str, ...]  # in the order they happen (later = better / newer)
    q_start: str
    q_venue: str  # {venue}
    q_items: str
    q_latest: str


HOBBIES = {
    "pottery": Hobby(
        "I signed up for a wheel-throwing class at {venue}, Thursday evenings.",
        ("Clayworks", "Mudhen Studio", "The Kiln Room"),
        ("I finally made {item} on the wheel!", "Came home from class with {item}, pretty proud of it."),
        ("a lopsided mug", "a speckled serving bowl", "a tall blue vase", "a set of four plates",
         "a teapot that pours"),
        "What class did {a} sign up for?", "What is {venue}?", "What has {a} made with clay so far?",
        "What's the most recent piece {a} made in class?",
    ),
    "climbing": Hobby(
        "A friend dragged me to {venue}, the bouldering gym, and now I go twice a week.",
        ("Crux Hall", "Boulder Barn", "The Overhang"),
        ("I sent my first {item} problem today!", "Topped out on a {item} last night, hands are shredded."),
        ("V2", "V3", "V4", "V5", "V6"),
        "What sport did {a} get into recently?", "What's {venue}?", "Which grades has {a} climbed?",
        "What's the hardest grade {a} has climbed so far?",
    ),
    "running": Hobby(
        "I started a couch-to-5k plan with the {venue} running club.",
        ("Riverside Striders", "Parkside Pacers", "Harbour Harriers"),
        ("Ran 5k in {item} this morning!", "New personal best on the 5k loop: {item}."),
        ("34:10", "31:45", "29:58", "28:20", "26:55"),
        "What fitness plan did {a} start?", "Who are the {venue}?", "How have {a}'s 5k times gone?",
        "What is {a}'s best 5k time?",
    ),
    "guitar": Hobby(
        "I bought a secondhand guitar from {venue} and I'm learning from online lessons.",
        ("Fret & Forge", "the pawn shop on 3rd", "a guy on Marketplace"),
        ("I can play {item} all the way through now.", "Nailed {item} tonight, no mistakes!"),
        ("Wonderwall", "Blackbird", "Hallelujah", "Wish You Were Here", "Fast Car"),
        "What instrument is {a} learning?", "What did {a} buy at {venue}?", "Which songs can {a} play?",
        "What's the latest song {a} learned?",
    ),
    "baking": Hobby(
        "I've been keeping a sourdough starter; I named it {venue}.",
        ("Clint Yeastwood", "Bread Pitt", "Dough Jones"),
        ("This week's bake: {item}.", "Pulled {item} out of the oven an hour ago, the kitchen smells amazing."),
        ("a rye loaf with caraway", "cinnamon babka", "rosemary focaccia", "olive ciabatta", "a seeded country loaf"),
        "What has {a} started doing in the kitchen?", "Who is {venue}?", "What breads has {a} baked?",
        "What did {a} bake most recently?",
    ),
    "birding": Hobby(
        "I've taken up birdwatching at {venue} on Sunday mornings.",
        ("Heron Marsh", "the Willow Creek reserve", "the old quarry ponds"),
        ("Spotted {item} today, my first one ever!", "Finally saw {item} through the binoculars."),
        ("a kingfisher", "a barn owl", "a red kite", "a great crested grebe", "a peregrine falcon"),
        "What new weekend hobby does {a} have?", "Where is {venue}, and why does {a} go there?",
        "Which birds has {a} seen?", "What's the last new bird {a} spotted?",
    ),
    "chess": Hobby(
        "I joined the chess club that meets at {venue}.",
        ("the Rook & Pawn café", "the community center", "the library annex"),
        ("My online rating went up to {item}!", "Rating check: {item} after a good week."),
        ("1150", "1240", "1310", "1395", "1460"),
        "What club did {a} join?", "What happens at {venue}?", "How has {a}'s chess rating changed?",
        "What's {a}'s chess rating now?",
    ),
    "gardening": Hobby(
        "We got a plot at the {venue} community garden!",
        ("Elm Street", "Riverside", "Hillcrest"),
        ("Harvested {item} this week.", "The plot gave us {item}, more than we can eat."),
        ("cherry tomatoes", "purple carrots", "snap peas", "chili peppers", "butternut squash"),
        "What did {a} get for growing vegetables?", "Where is {a}'s garden plot?",
        "What has {a} harvested from the garden?", "What did {a} harvest most recently?",
    ),
}  # fmt: skip

TRIPS = [
    ("Kyoto", "the bamboo forest at dawn"), ("Iceland", "the hot spring under the northern lights"),
    ("the Amalfi Coast", "the lemon groves above the sea"), ("Patagonia", "the glacier hike"),
    ("Marrakesh", "getting lost in the spice market"), ("New Orleans", "the jazz on Frenchmen Street"),
    ("the Scottish Highlands", "the ferry to Skye"), ("Mexico City", "the murals in the old palace"),
    ("Vietnam", "the lantern festival in Hoi An"), ("Croatia", "swimming under the waterfalls at Krka"),
]  # fmt: skip
TRIP = [
    "Just got back from {dest} with my friend {who}; {highlight} was the best part.",
    "{who} and I spent ten days in {dest}. Honestly, {highlight} made the whole trip.",
]  # fmt: skip
Q_TRIP_WHERE = "Where did {a} travel with {who}?"
Q_TRIP_BEST = "What did {a} enjoy most about {dest}?"
Q_TRIPS = "Which places has {a} traveled to?"

BOOKS = [
    ("The Overstory", "Richard Powers"), ("Piranesi", "Susanna Clarke"), ("Educated", "Tara Westover"),
    ("Project Hail Mary", "Andy Weir"), ("Circe", "Madeline Miller"), ("The Remains of the Day", "Kazuo Ishiguro"),
    ("Braiding Sweetgrass", "Robin Wall Kimmerer"), ("Station Eleven", "Emily St. John Mandel"),
    ("A Gentleman in Moscow", "Amor Towles"), ("The Name of the Wind", "Patrick Rothfuss"),
    ("Klara and the Sun", "Kazuo Ishiguro"), ("Sapiens", "Yuval Noah Harari"),
]  # fmt: skip
BOOK = "I'm reading {title} by {author} at the moment, {comment}."
BOOK_COMMENTS = ["I can't put it down", "slow but beautiful", "my book club picked it", "a bit too sad for me",
                 "the ending has me stressed", "recommended by my aunt"]  # fmt: skip
Q_BOOK_NOW = ["What book has {a} been reading lately?", "What's {a} reading these days?"]
Q_BOOK_OPINION = "What did {a} think of {title}?"

INJURIES = [("sprained my ankle", "ankle", "on the stairs at work"), ("broke my wrist", "wrist", "falling off my bike"),
            ("pulled a muscle in my back", "back", "moving a sofa"), ("tore a ligament in my knee", "knee",
            "playing five-a-side")]  # fmt: skip
INJURY = "Ugh, I {injury} {how}, so I'm taking it easy for a few weeks."
HEALED = "Good news: my {part} is completely healed, the physio signed me off."
Q_INJURY_NOW = "How is {a}'s {part} doing?"
Q_INJURY_BOTH = "What happened to {a}'s {part}, and has it recovered?"

PLANS = [
    "I booked my driving test for {date}, wish me luck.",
    "We're moving into the new flat on Alder Road on {date}!",
    "I'm taking my parents to Lisbon for their anniversary on {date}.",
    "I'm doing a charity swim across the bay on {date}.",
]  # fmt: skip
Q_PLANS = [
    "When is {a}'s driving test?", "When does {a} move into the new place?",
    "When is {a}'s trip with the parents?", "When is {a}'s charity swim?",
]  # fmt: skip

GREETINGS = ["Hey {b}! How's your week going?", "Hi {b}, long time no talk!", "Morning {b}! Got a minute to catch up?",
             "{b}! I've been meaning to message you.", "Evening {b}, how are things?"]  # fmt: skip
REPLIES = ["Pretty good, just tired.", "Busy but good!", "Honestly a bit of a blur.", "Not bad at all!",
           "Surviving!", "Good, good."]  # fmt: skip
REPLY_TAILS = ["What's new with you since last time?", "What have you been up to lately?", "How about you, all good?",
               "Long week, I'm running on fumes.", "The weekend can't come soon enough.",
               "Work has been nonstop but I'm hanging in there."]  # fmt: skip
REACTIONS = [
    "Oh wow, that's huge!", "No way!", "Haha, I love that.", "That sounds amazing.", "Oh no.", "Wait, really?",
    "That's so you, honestly.", "I'm so happy for you.", "Ha, of course.", "That made my day.", "Whoa.", "Seriously?",
]  # fmt: skip
FOLLOW_UPS = [
    "Tell me more when you have a minute.", "How are you feeling about it all?", "You have to send pictures!",
    "How did that even happen?", "When was this, last week?", "Who else was there with you?",
    "Is that a good thing or a bad thing?", "Tell me everything next time we talk.",
    "Was it as good as you hoped it would be?", "So what's next for you?", "I want the full story over coffee.",
    "How long have you been wanting that?",
]  # fmt: skip
SHOWS = ["Severance", "The Bear", "Slow Horses", "Bake Off", "Only Murders in the Building", "Succession", "Shōgun"]
FOODS = ["Ethiopian", "ramen", "Georgian", "taco", "dim sum", "Lebanese", "pizza", "Peruvian"]
STREETS = ["Main Street", "the harbour front", "Baker Lane", "Queen Street", "the market square"]
CHITCHAT = [
    "The weather has been so {weather} lately.",
    "We tried that new {food} place on {street}, {verdict}.",
    "I binged {show} over the weekend, no regrets.",
    "Traffic this morning was ridiculous, {n} minutes to go two miles.",
    "I need to stop buying houseplants, I'm at {n} now.",
    "Coffee number {k} today, don't judge.",
    "Spent Saturday clearing out the garage; found {n} mismatched socks.",
    "My phone screen cracked again, third time this year.",
    "Did you watch {show}? Everyone at work keeps talking about it.",
    "I've been trying to go to bed before {late} and failing.",
    "The neighbours are renovating, drilling started at {early} am.",
    "I finally cleaned my inbox, {n} unread down to zero.",
]  # fmt: skip
CHIT_REPLIES = [
    "Same here, honestly.", "Ha, classic.", "Ooh, I need to try that.", "I keep hearing about it.",
    "That's painful.", "Sounds like a good weekend to me.", "Respect.", "Ugh, I feel that.", "Lol.", "Oof.",
]  # fmt: skip
CHIT_TAILS = ["Same thing happened to me last week.", "We should go together sometime soon.",
              "Story of my life lately.", "I'm not even surprised at this point.", "Adding it to my list for sure.",
              "That's the dream, honestly.", "I was just telling someone about that yesterday."]  # fmt: skip
WEATHER = ["grey", "hot", "windy", "strange", "rainy", "gorgeous"]
VERDICTS = ["so good", "honestly overrated", "the portions were tiny", "we're going back next week"]
CLOSERS = ["Anyway, I should get going. Talk soon!", "Gotta run, dinner's ready.", "Let's catch up again soon!",
           "Take care, {b}!", "Good night, talk this weekend?"]  # fmt: skip
