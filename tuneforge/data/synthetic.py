"""Generated datasets for the demo: a general corpus to pretrain on, and a company's support desk.

Both are seeded and deterministic. The support desk is a fictional smart-home company,
Lumora, whose answers carry facts (prices, warranties...) that a general model cannot know
and a fixed house style it has never seen: exactly what fine-tuning is for. Each example
keeps `product_line` and `topic` metadata for per-slice evaluation, and `fact`: the words its
answer must contain (the quickstart's fact_accuracy grader checks them).
"""

from __future__ import annotations

import random

from tuneforge.data.types import Conversation, Message

# ---------------------------------------------------------------- general corpus

_TOPICS: dict[str, list[str]] = {
    "animals": [
        "The {animal} lives in the {habitat} and eats {food}.",
        "A young {animal} learns to find {food} in the {habitat}.",
        "Scientists watched the {animal} move across the {habitat} at night.",
        "Most {animal}s sleep during the day and hunt for {food} after dark.",
    ],
    "cities": [
        "{city} is a busy city with {count} museums and a large {place}.",
        "Visitors to {city} often walk to the {place} in the morning.",
        "The people of {city} meet at the {place} on {day}s.",
        "In {city}, the trains to the {place} leave every {count} minutes.",
    ],
    "weather": [
        "On {day} the weather in {city} will be {weather} with a light wind.",
        "After a {weather} week, the farmers near {city} were glad to see the sun.",
        "The forecast says {weather} skies for most of {day}.",
    ],
    "cooking": [
        "To make {dish}, mix the {ingredient} with a little salt and cook it slowly.",
        "A good {dish} needs fresh {ingredient} and some patience.",
        "My grandmother served {dish} with {ingredient} every {day}.",
    ],
    "science": [
        "Water boils at one hundred degrees at sea level.",
        "The {planet} moves around the sun on a long path.",
        "Light from the sun takes about eight minutes to reach the earth.",
        "A {animal} has a heart that beats faster than a human heart.",
    ],
    "shopping": [
        "The {item} costs ${price} at the {store}.",
        "My new {item} came with a {years} year warranty.",
        "The battery of this {item} lasts about {hours} hours.",
        "You can buy the {item} in {colour} or {colour}.",
        "The {store} ships most orders in {days} days.",
        "Some {item}s have no battery and run on mains power.",
        "Customers asked the {store} how long the {item} warranty is.",
        "Thanks for your order! Your {item} will arrive soon.",
    ],
    "work": [
        "The team finished the {project} report on {day} and sent it to the manager.",
        "Every {day} the engineers review the {project} plan together.",
        "She wrote a short note about the {project} before the meeting.",
    ],
}
_FILL: dict[str, list[str]] = {
    "animal": ["fox", "owl", "rabbit", "whale", "eagle", "otter", "deer", "bear", "wolf", "tiger"],
    "habitat": ["forest", "desert", "ocean", "river valley", "mountains", "grassland"],
    "food": ["berries", "fish", "seeds", "insects", "roots", "leaves"],
    "city": ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Madrid", "Nairobi", "Toronto"],
    "place": ["market", "harbour", "old bridge", "central park", "library", "station"],
    "count": ["three", "five", "seven", "ten", "twelve", "twenty"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "weather": ["rainy", "sunny", "cloudy", "windy", "snowy", "foggy"],
    "dish": ["soup", "bread", "rice", "stew", "pasta", "salad"],
    "ingredient": ["tomatoes", "onions", "garlic", "beans", "carrots", "herbs"],
    "planet": ["earth", "moon", "planet Mars", "planet Venus"],
    "project": ["budget", "design", "research", "hiring", "safety"],
    "item": [
        "light bulb",
        "glow lamp",
        "lantern",
        "light strip",
        "mini speaker",
        "echo speaker",
        "soundbar",
        "pro camera",
        "doorbell",
        "smart lock",
        "door lock",
        "thermostat",
        "air purifier",
        "kettle",
        "radio",
        "fan",
    ],
    "price": [str(p) for p in range(5, 320, 7)],
    "store": ["shop", "corner store", "online shop", "market stall", "electronics store"],
    "years": ["1", "2", "3", "4", "5"],
    "hours": [str(h) for h in range(2, 25)],
    "colour": ["white", "black", "grey", "blue", "silver", "sand", "amber", "rainbow", "red", "green"],
    "days": [str(d) for d in range(1, 10)],
}
_CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Peru": "Lima",
    "Egypt": "Cairo",
    "Norway": "Oslo",
    "Spain": "Madrid",
    "Kenya": "Nairobi",
    "Italy": "Rome",
    "Chile": "Santiago",
    "India": "New Delhi",
}
_NUMBERS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
]


def _fill(template: str, rng: random.Random) -> str:
    # each placeholder is drawn afresh where it repeats ("{colour} or {colour}")
    parts = template.split("{")
    out = [parts[0]]
    for part in parts[1:]:
        key, _, rest = part.partition("}")
        out.append(rng.choice(_FILL[key]) + rest)
    return "".join(out)


def general_chat(rng: random.Random) -> list[dict[str, str]]:
    """A short general-knowledge exchange, so the base model knows the chat format."""
    kind = rng.randrange(4)
    if kind == 0:
        country = rng.choice(list(_CAPITALS))
        q, a = f"What is the capital of {country}?", f"The capital of {country} is {_CAPITALS[country]}."
    elif kind == 1:
        x, y = rng.randrange(9), rng.randrange(9)
        q, a = (
            f"What is {_NUMBERS[x]} plus {_NUMBERS[y]}?",
            f"{_NUMBERS[x].capitalize()} plus {_NUMBERS[y]} is {_NUMBERS[x + y]}.",
        )
    elif kind == 2:
        item, price = rng.choice(_FILL["item"]), rng.choice(_FILL["price"])
        q, a = rng.choice(
            [
                (f"How much is a {item}?", f"A {item} usually costs about ${price}."),
                (
                    f"Does a {item} have a battery?",
                    f"Many {item}s have a battery that lasts {rng.choice(_FILL['hours'])} hours.",
                ),
                (f"What colours does a {item} come in?", f"A {item} often comes in {rng.choice(_FILL['colour'])}."),
            ]
        )
    else:
        topic = rng.choice(list(_TOPICS))
        q, a = f"Tell me something about {topic}.", _fill(rng.choice(_TOPICS[topic]), rng)
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": q},
        {"role": "assistant", "content": a},
    ]


def general_corpus(n: int, seed: int = 0) -> list[str]:
    """`n` short paragraphs of varied general sentences across topics."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        topic = rng.choice(list(_TOPICS))
        docs.append(" ".join(_fill(rng.choice(_TOPICS[topic]), rng) for _ in range(rng.randint(2, 5))))
    return docs


# ---------------------------------------------------------------- support desk

COMPANY = "Lumora"
SYSTEM_PROMPT = f"You are the customer support assistant of {COMPANY}, a smart-home company."
_SIGN_OFF = f"Anything else? The {COMPANY} team"

# product -> (product line, price in $, warranty years, battery hours, colours, ships in days); no product's fact is
# a substring of another's on the same topic ($19 / $189, white and grey / pearl white): a fact check is not fooled
PRODUCTS: dict[str, tuple[str, int, int, int, str, int]] = {
    "Glow Bulb": ("lighting", 19, 2, 0, "white and amber", 2),
    "Light Strip": ("lighting", 39, 2, 0, "white and rainbow", 3),
    "Lantern": ("lighting", 59, 3, 12, "black and sand", 4),
    "Echo Mini": ("audio", 49, 1, 10, "grey and blue", 2),
    "Soundbar": ("audio", 189, 3, 0, "charcoal", 5),
    "Cam Pro": ("security", 129, 2, 8, "white and grey", 3),
    "Doorbell": ("security", 99, 2, 6, "black and silver", 4),
    "Smart Lock": ("security", 149, 5, 9, "silver and bronze", 6),
    "Thermostat": ("climate", 169, 4, 0, "white and black", 3),
    "Air Purifier": ("climate", 229, 3, 0, "pearl white", 7),
}

_QUESTIONS: dict[str, list[str]] = {
    "price": [
        "How much does the {p} cost?",
        "What is the price of the {p}?",
        "How much is the {p}?",
        "What does a {p} cost?",
        "Can you tell me the {p} price?",
        "Is the {p} expensive? What does it cost?",
    ],
    "warranty": [
        "What warranty does the {p} have?",
        "How long is the {p} warranty?",
        "Is the {p} under warranty, and for how long?",
        "How many years of warranty come with the {p}?",
        "What is the warranty on the {p}?",
    ],
    "battery": [
        "How long does the {p} battery last?",
        "What is the battery life of the {p}?",
        "Does the {p} run on a battery?",
        "How many hours can the {p} run without power?",
        "Tell me about the {p} battery.",
    ],
    "colours": [
        "Which colours does the {p} come in?",
        "What colours are available for the {p}?",
        "Can I get the {p} in another colour?",
        "What colour options does the {p} have?",
        "Is the {p} sold in different colours?",
    ],
    "shipping": [
        "How fast do you ship the {p}?",
        "When will my {p} arrive?",
        "How long does shipping take for the {p}?",
        "How many days until the {p} is delivered?",
        "What is the delivery time for the {p}?",
    ],
}
_OPENERS = ["", "", "Hi! ", "Hello, ", "Quick question: ", "Good morning. ", "Hey there, "]


def product_fact(product: str, topic: str) -> str:
    """The words a right answer must contain ("$49", "in 2 days"): what the fact_accuracy grader checks.
    Each is distinct within its topic, and none is in another product's answer ("in 2 days" is not in "in 12 days")."""
    line, price, warranty, battery, colours, days = PRODUCTS[product]
    return {
        "price": f"${price}",
        "warranty": f"{warranty} year warranty",
        "battery": f"{battery} hours" if battery else "no battery",
        "colours": colours,
        "shipping": f"in {days} days",
    }[topic]


def _answer(product: str, topic: str) -> str:
    line, price, warranty, battery, colours, days = PRODUCTS[product]
    name = f"{COMPANY} {product}"
    fact = {
        "price": f"The {name} costs ${price}.",
        "warranty": f"The {name} has a {warranty} year warranty.",
        "battery": (
            f"The {name} battery lasts {battery} hours."
            if battery
            else f"The {name} has no battery; it runs on mains power."
        ),
        "colours": f"The {name} comes in {colours}.",
        "shipping": f"We ship the {name} in {days} days.",
    }[topic]
    return f"Thanks for asking! {fact} {_SIGN_OFF}"


def support_desk_dataset(n: int, seed: int = 0) -> list[Conversation]:
    """`n` distinct support conversations: a customer asks about one product fact, answered in house style.

    Questions are drawn without replacement from every (product, topic, phrasing, opener)
    combination, so a random split never puts the same question in train and test.
    """
    rng = random.Random(seed)
    combos = [
        (product, topic, template, name, opener)
        for product in PRODUCTS
        for topic, templates in _QUESTIONS.items()
        for template in templates
        for name in (f"{COMPANY} {product}", product)
        for opener in dict.fromkeys(_OPENERS)
    ]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} distinct support conversations can be generated, asked for {n}")
    out = []
    for product, topic, template, name, opener in rng.sample(combos, n):
        question = template.format(p=name)
        if opener.endswith(", "):
            question = question[0].lower() + question[1:]
        out.append(
            Conversation(
                messages=[
                    Message("system", SYSTEM_PROMPT),
                    Message("user", opener + question),
                    Message("assistant", _answer(product, topic)),
                ],
                metadata={
                    "product_line": PRODUCTS[product][0],
                    "topic": topic,
                    "product": product,
                    "fact": product_fact(product, topic),
                },
            )
        )
    return out


# ---------------------------------------------------------------- reading and following demonstrations (pretraining)
# Invented brands and products with facts drawn afresh for every chat: the only way to answer is to read the passages
# or the demonstrations in the prompt. None of them is a Lumora product, so the base cannot have memorised a test fact.

_SYLLABLES = ["va", "kor", "mi", "tel", "zu", "ran", "pe", "lo", "dax", "qui", "sen", "bo", "ny", "ter", "fal", "ix"]
_KINDS = [
    "Kettle",
    "Toaster",
    "Blender",
    "Heater",
    "Router",
    "Scale",
    "Clock",
    "Radio",
    "Fan",
    "Projector",
    "Drone",
    "Printer",
    "Mixer",
    "Monitor",
    "Charger",
    "Juicer",
    "Grill",
    "Tablet",
    "Keyboard",
    "Headset",
]
_MODELS = ["Mini", "Max", "Pro", "Go", "Air", "One", "Plus", "Neo", "Duo", "Nano", "2", "3", "X", "S"]
_COLOURS = ["white", "black", "grey", "blue", "silver", "sand", "amber", "red", "green", "copper", "gold", "navy"]
_GREETINGS = ["Thanks for asking!", "Hello!", "Great question.", "Hi there!", "Happy to help.", "Good news:", ""]
_SIGN_OFFS = ["Have a nice day!", "Anything else? The {b} team", "Cheers, {b} support", "Best, the {b} crew", ""]
_FACT_SENTENCES: dict[str, list[str]] = {
    "price": ["The {n} costs ${v}.", "The {n} is priced at ${v}.", "The {n} sells for ${v}."],
    "warranty": ["The {n} has a {v} year warranty.", "The {n} comes with a {v} year warranty."],
    "battery": ["The {n} battery lasts {v} hours.", "On one charge the {n} runs for {v} hours."],
    "colours": ["The {n} comes in {v}.", "You can get the {n} in {v}."],
    "shipping": ["We ship the {n} in {v} days.", "The {n} is delivered in {v} days."],
    "weight": ["The {n} weighs {v} grams.", "The {n} has a weight of {v} grams."],
    "year": ["The {n} came out in {v}.", "The {n} was launched in {v}."],
    "city": ["The {n} is made in {v}.", "The {n} is built in {v}."],
}
_NO_BATTERY = ["The {n} has no battery; it runs on mains power.", "The {n} has no battery and runs on mains power."]
_EXTRA_QUESTIONS = {
    "weight": ["How heavy is the {p}?", "What does the {p} weigh?", "How many grams is the {p}?"],
    "year": ["When did the {p} come out?", "What year was the {p} launched?", "When was the {p} released?"],
    "city": ["Where is the {p} made?", "In which city is the {p} built?", "Where do you make the {p}?"],
}


def _brand(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _product(rng: random.Random, brand: str) -> str:
    name = rng.choice(_KINDS) + (f" {rng.choice(_MODELS)}" if rng.random() < 0.6 else "")
    return name if name.split()[0] != brand else f"{name} {rng.choice(_MODELS)}"


def _value(rng: random.Random, topic: str) -> str | int:
    if topic == "colours":
        a, b = rng.sample(_COLOURS, 2)
        return f"{a} and {b}"
    if topic == "city":
        return rng.choice(_FILL["city"])
    low, high = {
        "price": (5, 400),
        "warranty": (1, 6),
        "battery": (0, 24),
        "shipping": (1, 12),
        "weight": (50, 2000),
        "year": (1995, 2025),
    }[topic]
    return rng.randint(low, high)


def _fact_sentence(rng: random.Random, name: str, topic: str, value) -> str:
    if topic == "battery" and value == 0:
        return rng.choice(_NO_BATTERY).format(n=name)
    return rng.choice(_FACT_SENTENCES[topic]).format(n=name, v=value)


def _question(rng: random.Random, brand: str, product: str, topic: str) -> str:
    templates = _QUESTIONS.get(topic) or _EXTRA_QUESTIONS[topic]
    name = f"{brand} {product}" if rng.random() < 0.5 else product
    opener = rng.choice(_OPENERS)
    question = rng.choice(templates).format(p=name)
    return opener + (question[0].lower() + question[1:] if opener.endswith(", ") else question)


def _world(rng: random.Random, products: int) -> tuple[str, dict[str, dict[str, object]]]:
    """One invented brand, its products and their facts (drawn afresh for each chat)."""
    brand = _brand(rng)
    names: dict[str, dict[str, object]] = {}
    while len(names) < products:
        names[_product(rng, brand)] = {t: _value(rng, t) for t in _FACT_SENTENCES}
    return brand, names


def _system_instruction(rng: random.Random, brand: str) -> str:
    return rng.choice(
        [
            "You are a helpful assistant.",
            f"You are the customer support assistant of {brand}, a {rng.choice(['smart-home', 'kitchen', 'gadget', 'electronics'])} company.",  # noqa: E501
            f"You answer questions about {brand} products.",
        ]
    )


def reading_chat(rng: random.Random) -> list[dict[str, str]]:
    """Passages (support answers or fact sheets) in the system message, a question, and the answer read from them.

    The layout is the one `eval.baselines.RAG` builds: the instructions, a header, numbered passages. The
    distractors are the hard ones a retriever returns: the same product on another topic, or another product on
    the same topic. The answer copies the fact sentence of the passage that holds it.
    """
    from tuneforge.eval.baselines import RAG_HEADER

    brand, world = _world(rng, rng.randint(2, 3))
    products, topics = list(world), list(_FACT_SENTENCES)
    product, topic = rng.choice(products), rng.choice(topics)
    full = f"{brand} {product}"
    answer = _fact_sentence(rng, full, topic, world[product][topic])
    chosen = {(product, topic)}
    while len(chosen) < rng.randint(2, 3):
        chosen.add(
            (product, rng.choice(topics)) if rng.random() < 0.5 else (rng.choice(products), topic)
        )  # hard distractors
    passages = []
    for p, t in chosen:
        sentence = answer if (p, t) == (product, topic) else _fact_sentence(rng, f"{brand} {p}", t, world[p][t])
        if rng.random() < 0.7:  # a support answer as the RAG baseline retrieves it from a training split
            greet, sign = rng.choice(_GREETINGS), rng.choice(_SIGN_OFFS).format(b=brand)
            passages.append(f"Q: {_question(rng, brand, p, t)}\nA: {' '.join(x for x in (greet, sentence, sign) if x)}")
        else:
            passages.append(sentence)
    rng.shuffle(passages)
    block = "\n".join(f"[{i + 1}] {p}" for i, p in enumerate(passages))
    return [
        {"role": "system", "content": f"{_system_instruction(rng, brand)}\n\n{RAG_HEADER}\n{block}"},
        {"role": "user", "content": _question(rng, brand, product, topic)},
        {"role": "assistant", "content": answer},
    ]


def demonstration_chat(rng: random.Random) -> list[dict[str, str]]:
    """k question/answer turns in one house style, then a question: the answer follows the demonstrations' pattern
    (greeting, fact sentence, sign-off) and, where a demonstration holds the asked fact, copies it."""
    brand, world = _world(rng, rng.randint(2, 3))
    products, topics = list(world), list(_FACT_SENTENCES)
    greet, sign = rng.choice(_GREETINGS), rng.choice(_SIGN_OFFS).format(b=brand)
    # a house style keeps one sentence template per topic, so the demonstrations show the wording to use
    style = {t: rng.choice(_FACT_SENTENCES[t]) for t in topics}

    def reply(p: str, t: str) -> str:
        value = world[p][t]
        sentence = (
            _NO_BATTERY[0].format(n=f"{brand} {p}")
            if t == "battery" and value == 0
            else style[t].format(n=f"{brand} {p}", v=value)
        )
        return " ".join(x for x in (greet, sentence, sign) if x)

    product, topic = rng.choice(products), rng.choice(topics)
    shots = [(product, topic)] if rng.random() < 0.8 else []
    while len(shots) < rng.randint(1, 3):
        shots.append((rng.choice(products), rng.choice(topics)))
    rng.shuffle(shots)
    messages = [{"role": "system", "content": _system_instruction(rng, brand)}] if rng.random() < 0.8 else []
    for p, t in shots:
        messages += [
            {"role": "user", "content": _question(rng, brand, p, t)},
            {"role": "assistant", "content": reply(p, t)},
        ]
    return messages + [
        {"role": "user", "content": _question(rng, brand, product, topic)},
        {"role": "assistant", "content": reply(product, topic)},
    ]


def general_replay(n: int, seed: int) -> list[Conversation]:
    """`n` general chats for `data.replay: {source: demo-general}`: the pretraining mix of short general exchanges
    and general paragraphs (written on request), drawn with their own seed (not the pretraining's or the held-out
    forgetting text's)."""
    rng = random.Random(f"replay:{seed}")
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            messages = general_chat(rng)
        else:
            topic = rng.choice(list(_TOPICS))
            text = " ".join(_fill(rng.choice(_TOPICS[topic]), rng) for _ in range(rng.randint(2, 4)))
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Write a few sentences about {topic}."},
                {"role": "assistant", "content": text},
            ]
        out.append(Conversation([Message(m["role"], m["content"]) for m in messages], {"replay": "demo-general"}))
    return out
