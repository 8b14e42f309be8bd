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
