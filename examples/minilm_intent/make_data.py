"""Generate an intent-classification dataset for a support desk (train / validation / test JSONL).

Six intents, each written with twelve phrasings and filled with products, order numbers,
error codes and small noise (greetings, lower case, missing punctuation). The test split
uses phrasings never seen in training, so it measures whether a model understands the
request rather than whether it recognises a template.

    python examples/minilm_intent/make_data.py examples/minilm_intent/data
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

PRODUCTS = ["Orbit router", "Nimbus laptop", "Pebble phone", "Lumen TV", "Atlas smart plug", "Vega headphones", "Echo thermostat"]
ACTIONS = ["open the settings", "connect to wifi", "update the firmware", "start a video call", "pair it with my phone", "print a report"]
AGENTS = ["Maria", "Tom", "Priya", "Jonas", "Aisha"]

INTENTS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for my {product}", "why is my invoice for the {product} higher this month",
        "please refund the extra charge on my {product} bill", "there is a payment on my card I do not recognise",
        "can I get a copy of the receipt for order {order}", "my discount code was not applied to the {product}",
        "you billed me after I returned the {product}", "how do I change the credit card on my account",
        "the price I paid for the {product} is not what the website said",
        "I need an invoice with my company name for order {order}", "was I overcharged for shipping on order {order}",
        "my bank shows two payments for the same {product}",
    ],
    "account_access": [
        "I can't log in to my account", "please reset my password", "I am locked out after too many attempts",
        "the verification code never arrives", "I forgot the email I used to sign up", "my login keeps saying wrong password",
        "how do I turn on two factor authentication", "someone else may have logged in to my account",
        "the app logs me out every time I {action}", "I changed my phone and lost my authenticator",
        "my username is not recognised anymore", "the password reset link has expired",
    ],
    "shipping": [
        "where is my {product} order", "my delivery for order {order} is late", "the tracking number for order {order} does not work",
        "the courier left my {product} at the wrong address", "can I change the delivery address for order {order}",
        "my package says delivered but nothing arrived", "how long does shipping take for the {product}",
        "order {order} has been stuck in transit for a week", "the box with my {product} arrived damaged",
        "can I pick up my {product} at a store instead", "the delivery slot for order {order} was missed",
        "do you ship the {product} abroad",
    ],
    "cancellation": [
        "cancel my subscription", "I want to stop my plan at the end of the month", "how do I close my account for good",
        "please cancel order {order} before it ships", "I no longer need the {product}, cancel the order",
        "stop the automatic renewal", "end my premium membership today", "I want to downgrade and then cancel",
        "delete my account and all my data", "can I cancel the {product} protection plan",
        "terminate my contract, I am moving abroad", "I signed up by mistake, please undo it",
    ],
    "technical_issue": [
        "my {product} crashes when I {action}", "the {product} freezes on startup", "I get error {code} when I {action}",
        "the {product} will not turn on anymore", "the battery of my {product} drains in an hour",
        "the {product} keeps disconnecting from wifi", "the screen of my {product} flickers",
        "the {product} gets very hot when I {action}", "after the update my {product} is really slow",
        "the {product} makes a strange noise", "sound does not work on the {product}", "the {product} restarts by itself",
    ],
    "compliment": [
        "thanks, {agent} was really helpful", "great service, the {product} works perfectly now",
        "I love the new {product} update", "{agent} solved my problem in minutes, thank you",
        "just wanted to say the {product} is excellent", "your support team is fantastic",
        "the {product} arrived early, very happy", "five stars for {agent}",
        "best customer service I have had in years", "the setup of the {product} was so easy",
        "kudos to {agent} for the patience", "really impressed with the {product}",
    ],
}
HELD_OUT = 3  # the last phrasings of each intent appear only in the test split
PREFIXES = ["", "", "", "hi, ", "hello team, ", "urgent: ", "quick question: ", "hey "]
SUFFIXES = ["", "", ".", "!", "?", " thanks", " asap", " please help"]


def _fill(template: str, rng: random.Random) -> str:
    text = template.format(product=rng.choice(PRODUCTS), action=rng.choice(ACTIONS), agent=rng.choice(AGENTS),
                           order=rng.randint(10000, 99999), code=f"E{rng.randint(100, 999)}")
    text = rng.choice(PREFIXES) + text + rng.choice(SUFFIXES)
    return text.lower() if rng.random() < 0.3 else text[0].upper() + text[1:]


def make_split(n: int, seed: int, held_out: bool) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        intent = sorted(INTENTS)[i % len(INTENTS)]
        templates = INTENTS[intent][-HELD_OUT:] if held_out else INTENTS[intent][:-HELD_OUT]
        rows.append({"text": _fill(rng.choice(templates), rng), "label": intent})
    rng.shuffle(rows)
    return rows


def main(out: Path, n_train: int = 600, n_val: int = 120, n_test: int = 300) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", make_split(n_train, 1, False)), ("validation", make_split(n_val, 2, False)), ("test", make_split(n_test, 3, True))):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {n_train}/{n_val}/{n_test} examples to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data"))
