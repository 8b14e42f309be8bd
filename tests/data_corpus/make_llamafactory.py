"""Regenerate tests/data_corpus/llamafactory/: a LLaMA-Factory data folder (dataset_info.json and files in
each layout it describes), written from the public data/README description, not copied.
tests/test_data_sources_llamafactory.py asserts what each dataset reads, trains and rejects."""

import json
from pathlib import Path

OUT = Path(__file__).parent / "llamafactory"


def jsonl(name, rows):
    (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def array(name, rows):
    (OUT / name).write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def turn(who, value):
    return {"from": who, "value": value}


INFO = {
    # alpaca with every column: 6 records; line of item 5 has no output (rejected: missing_field 'output'),
    # item 6 carries a field the description does not name (kept, reported as unused)
    "alpaca_demo": {
        "file_name": "alpaca.json",
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    },
    # sharegpt defaults (from/value, human/gpt): 4 records; the 3rd uses a speaker no tag names (rejected)
    "sharegpt_demo": {
        "file_name": "sharegpt.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "system": "system"},
    },
    # the OpenAI layout through tags, with content parts and a per-message loss weight: 3 records
    "openai_tags": {
        "file_name": "openai.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    },
    # alpaca preference pairs: 3 records
    "ranking_alpaca": {
        "file_name": "ranking_alpaca.json",
        "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    },
    # sharegpt preference pairs (chosen/rejected message objects): 2 records
    "ranking_sharegpt": {
        "file_name": "ranking_sharegpt.json",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    # KTO in sharegpt: 4 records, 2 desirable, 2 not
    "kto_demo": {
        "file_name": "kto.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    # pre-training: only the prompt column (3 documents)
    "pretrain_demo": {"file_name": "pretrain.jsonl", "columns": {"prompt": "text"}},
    # multimodal: 2 records refused by name
    "mllm_demo": {
        "file_name": "mllm.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
}

ALPACA = [
    {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Name the largest planet.", "input": "", "output": "Jupiter is the largest planet."},
    {"instruction": "Answer briefly.", "system": "You are terse.", "output": "Understood, I will be brief."},
    {
        "instruction": "And the smallest?",
        "output": "Mercury is the smallest planet.",
        "history": [["Name the largest planet.", "Jupiter."], ["How many moons does it have?", "About 95."]],
    },
    {"instruction": "This record lost its answer.", "input": ""},
    {
        "instruction": "Write a haiku about rain.",
        "output": "Soft rain on the roof\nthe gutters hum all night long\nmorning smells of earth",
        "source": "poetry-set",
    },
]

SHAREGPT = [
    {"conversations": [turn("human", "What is 2 + 2?"), turn("gpt", "2 + 2 is 4.")], "system": "You do math."},
    {
        "conversations": [turn("system", "You are a pirate."), turn("human", "Hello"), turn("gpt", "Ahoy, matey!")],
        "system": "You are a librarian.",
    },
    {"conversations": [turn("human", "Hi"), turn("bot", "Hello")]},
    {
        "conversations": [
            turn("human", "Capital of Italy?"),
            turn("gpt", "Rome."),
            turn("human", "And of Spain?"),
            turn("gpt", "Madrid."),
        ]
    },
]

OPENAI = [
    {
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "I failed my exam."},
            {"role": "assistant", "content": "I'm sorry. You can try again, and you'll be better prepared."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Spell "}, {"type": "text", "text": "cat"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "C-A-T"}]},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "Old answer"},
            {"role": "user", "content": "Second question"},
            {"role": "assistant", "content": "New answer"},
        ]
    },
]

# LLaMA-Factory v1 messages (read directly, format chat): content parts with "value", loss_weight per message;
# the first answer of record 2 has loss_weight 0 (context, not trained); record 3 has a fractional weight (rejected)
V1 = [
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "Hi"}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Hello there."}], "loss_weight": 1.0},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "Q1"}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Draft answer"}], "loss_weight": 0.0},
            {"role": "user", "content": [{"type": "text", "value": "Q2"}], "loss_weight": 0.0},
            {"role": "assistant", "content": [{"type": "text", "value": "Final answer"}], "loss_weight": 1.0},
        ]
    },
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "loss_weight": 0.5}]},
]

RANKING_ALPACA = [
    {"instruction": "Is the sky blue?", "input": "", "chosen": "Yes, on a clear day.", "rejected": "No, green."},
    {"instruction": "Add the numbers", "input": "3 and 4", "chosen": "3 + 4 = 7.", "rejected": "3 + 4 = 8."},
    {"instruction": "Say hello politely.", "chosen": "Hello, nice to meet you.", "rejected": "What do you want?"},
]

RANKING_SHAREGPT = [
    {
        "conversations": [turn("human", "Recommend a book.")],
        "chosen": turn("gpt", "Try 'Dune' by Frank Herbert."),
        "rejected": turn("gpt", "Books are boring."),
    },
    {
        "conversations": [turn("human", "Hi"), turn("gpt", "Hello!"), turn("human", "What's the time in UTC+0?")],
        "chosen": turn("gpt", "I cannot see a clock, but you can check time.is."),
        "rejected": turn("gpt", "It is 25 o'clock."),
    },
]

KTO = [
    {
        "messages": [
            {"role": "user", "content": "Define gravity."},
            {"role": "assistant", "content": "The attraction between masses."},
        ],
        "label": True,
    },
    {
        "messages": [
            {"role": "user", "content": "Define gravity."},
            {"role": "assistant", "content": "A kind of soup."},
        ],
        "label": False,
    },
    {
        "messages": [
            {"role": "user", "content": "Boiling point of water?"},
            {"role": "assistant", "content": "100 C at sea level."},
        ],
        "label": True,
    },
    {
        "messages": [
            {"role": "user", "content": "Boiling point of water?"},
            {"role": "assistant", "content": "Always 50 C."},
        ],
        "label": False,
    },
]

PRETRAIN = [
    {"text": "The river runs through the valley and feeds the fields."},
    {"text": "Bread is made from flour, water, salt and yeast."},
    {"text": "A lighthouse guides ships along a rocky coast."},
]

MLLM = [
    {
        "messages": [
            {"role": "user", "content": "<image>What is in the picture?"},
            {"role": "assistant", "content": "A cat on a sofa."},
        ],
        "images": ["cat.jpg"],
    },
    {
        "messages": [
            {"role": "user", "content": "<image><image>Compare them."},
            {"role": "assistant", "content": "Both are dogs."},
        ],
        "images": ["a.jpg", "b.jpg"],
    },
]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    (OUT / "dataset_info.json").write_text(json.dumps(INFO, indent=2) + "\n", encoding="utf-8")
    array("alpaca.json", ALPACA)
    jsonl("sharegpt.jsonl", SHAREGPT)
    jsonl("openai.jsonl", OPENAI)
    array("ranking_alpaca.json", RANKING_ALPACA)
    array("ranking_sharegpt.json", RANKING_SHAREGPT)
    array("kto.json", KTO)
    jsonl("pretrain.jsonl", PRETRAIN)
    array("mllm.json", MLLM)
    jsonl("v1_messages.jsonl", V1)


if __name__ == "__main__":
    main()
