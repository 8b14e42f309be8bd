"""Regenerate tests/data_corpus/layouts/: one file per layout of other tools' data, written from their
public descriptions (not copied). tests/test_data_layouts.py asserts what each one reads and rejects."""

import json
from pathlib import Path

OUT = Path(__file__).parent / "layouts"


def msg(role, content):
    return {"role": role, "content": content}


def jsonl(name, rows):
    (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def array(name, rows):
    (OUT / name).write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    # tuneforge / TRL explicit prompt: a string prompt, a conversational prompt with one-message answers,
    # and answers that repeat the prompt; the last record has a two-message answer (rejected: not_one_answer).
    jsonl(
        "preference_prompt.jsonl",
        [
            {"prompt": "Name a prime number.", "chosen": "7 is prime.", "rejected": "9 is prime."},
            {
                "prompt": [msg("system", "Be brief."), msg("user", "Capital of France?")],
                "chosen": [msg("assistant", "Paris.")],
                "rejected": [msg("assistant", "Lyon.")],
            },
            {
                "prompt": [msg("user", "2+2?")],
                "chosen": [msg("user", "2+2?"), msg("assistant", "4")],
                "rejected": [msg("user", "2+2?"), msg("assistant", "5")],
            },
            {
                "prompt": "Say hi.",
                "chosen": [msg("assistant", "Hi!"), msg("user", "again"), msg("assistant", "Hi again!")],
                "rejected": [msg("assistant", "Go away.")],
            },
        ],
    )
    # TRL implicit prompt: two whole conversations; the shared prefix is the prompt.
    jsonl(
        "preference_implicit.jsonl",
        [
            {
                "chosen": [msg("user", "Is water wet?"), msg("assistant", "It makes things wet.")],
                "rejected": [msg("user", "Is water wet?"), msg("assistant", "No idea.")],
            },
            {
                "chosen": [
                    msg("user", "Hi"),
                    msg("assistant", "Hello"),
                    msg("user", "Tell a joke"),
                    msg("assistant", "A pun, as requested."),
                ],
                "rejected": [
                    msg("user", "Hi"),
                    msg("assistant", "Hello"),
                    msg("user", "Tell a joke"),
                    msg("assistant", "No."),
                ],
            },
        ],
    )
    # OpenAI's DPO fine-tuning format; the second record's input carries tools (not used: a warning);
    # the third prefers two messages (rejected: not_one_answer).
    jsonl(
        "openai_dpo.jsonl",
        [
            {
                "input": {
                    "messages": [msg("user", "Hello, can you tell me how cold San Francisco is today?")],
                    "tools": [],
                    "parallel_tool_calls": True,
                },
                "preferred_output": [
                    msg("assistant", "Today in San Francisco it is not quite cold, as expected: about 23°C.")
                ],
                "non_preferred_output": [msg("assistant", "It is not particularly cold in San Francisco today.")],
            },
            {
                "input": {"messages": [msg("system", "Answer in French."), msg("user", "Thank you")]},
                "preferred_output": [msg("assistant", "Merci à vous !")],
                "non_preferred_output": [msg("assistant", "You're welcome.")],
            },
            {
                "input": {"messages": [msg("user", "Count to two")]},
                "preferred_output": [msg("assistant", "One"), msg("assistant", "Two")],
                "non_preferred_output": [msg("assistant", "Three")],
            },
        ],
    )
    # ShareGPT-style preference data (LLaMA-Factory's dpo demo layout): a JSON array, chosen/rejected are turns.
    array(
        "sharegpt_dpo.json",
        [
            {
                "conversations": [{"from": "human", "value": "What is the boiling point of water at sea level?"}],
                "chosen": {"from": "gpt", "value": "100 °C (212 °F)."},
                "rejected": {"from": "gpt", "value": "50 °C."},
            },
            {
                "conversations": [
                    {"from": "system", "value": "You are terse."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hi."},
                    {"from": "human", "value": "Favourite colour?"},
                ],
                "chosen": {"from": "gpt", "value": "Blue."},
                "rejected": {"from": "gpt", "value": "I like many colours, let me list them all."},
            },
            {
                "conversations": [{"from": "human", "value": "Translate 'cat' to German"}],
                "system": "Translate literally.",
                "chosen": {"from": "gpt", "value": "Katze"},
                "rejected": {"from": "gpt", "value": "Hund"},
            },
            {
                "conversations": [{"from": "human", "value": "Pick one"}],
                "chosen": {"from": "human", "value": "A"},
                "rejected": {"from": "gpt", "value": "B"},
            },
        ],
    )

    # LLaMA-Factory v1: two whole conversations, text content parts {"type": "text", "value"}, loss_weight.
    def v1(role, text):
        return {
            "role": role,
            "content": [{"type": "text", "value": text}],
            "loss_weight": 1.0 if role == "assistant" else 0.0,
        }

    jsonl(
        "llamafactory_v1_dpo.jsonl",
        [
            {
                "chosen_messages": [
                    v1("user", "Define entropy."),
                    v1("assistant", "A measure of disorder or uncertainty."),
                ],
                "rejected_messages": [v1("user", "Define entropy."), v1("assistant", "A kind of energy drink.")],
            },
            {
                "chosen_messages": [v1("system", "Math tutor."), v1("user", "3*3?"), v1("assistant", "9")],
                "rejected_messages": [v1("system", "Math tutor."), v1("user", "3*3?"), v1("assistant", "6")],
            },
            {
                "chosen_messages": [v1("user", "Question A"), v1("assistant", "Answer A")],
                "rejected_messages": [v1("user", "Question B"), v1("assistant", "Answer B")],
            },
        ],
    )
    # KTO: one answer per record, labelled desirable (true) or not (false). LLaMA-Factory (messages + kto_tag
    # column "label") and TRL's unpaired preference layout (prompt/completion/label). All refused.
    array(
        "kto_llamafactory.json",
        [
            {"messages": [msg("user", f"Question {i}"), msg("assistant", f"Answer {i}")], "label": i % 2 == 0}
            for i in range(6)
        ],
    )
    jsonl("kto_trl.jsonl", [{"prompt": f"Q{i}", "completion": f"A{i}", "label": i % 3 != 0} for i in range(3)])
    # Multimodal: LLaMA-Factory's images column with <image> placeholders, OpenAI image_url and input_audio parts.
    array(
        "multimodal_llamafactory.json",
        [
            {
                "messages": [msg("user", "<image>What is in the picture?"), msg("assistant", "A cat on a sofa.")],
                "images": ["mllm_demo_data/1.jpg"],
            },
            {
                "messages": [msg("user", "<video>What happens?"), msg("assistant", "A ball rolls.")],
                "videos": ["mllm_demo_data/1.mp4"],
            },
            {"messages": [msg("user", "<image><image>Compare them."), msg("assistant", "The left one is larger.")]},
        ],
    )
    jsonl(
        "multimodal_openai.jsonl",
        [
            {
                "messages": [
                    msg(
                        "user",
                        [
                            {"type": "text", "text": "Describe"},
                            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        ],
                    ),
                    msg("assistant", "A red square."),
                ]
            },
            {
                "messages": [
                    msg("user", [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]),
                    msg("assistant", "Someone says hello."),
                ]
            },
            {
                "messages": [
                    msg("user", [{"type": "text", "text": "Plain "}, {"type": "text", "text": "text parts"}]),
                    msg("assistant", "are read."),
                ]
            },
        ],
    )
    # Alpaca with columns no format reads (kept in metadata, reported as unused).
    jsonl(
        "alpaca_extra_fields.jsonl",
        [
            {"instruction": "Add 2 and 3", "input": "", "output": "5", "id": "a1", "history": []},
            {"instruction": "Capital of Japan?", "input": "", "output": "Tokyo", "id": "a2"},
            {"instruction": "Reverse 'ab'", "input": "", "output": "ba", "id": "a3", "category": "strings"},
        ],
    )
    # A folder as other tools ship it: a README, a dataset description and one data file.
    folder = OUT / "folder_with_readme"
    folder.mkdir(exist_ok=True)
    (folder / "README.md").write_text(
        "# Demo data\n\nThis folder holds demo data.\n\nIt is not training text.\n", encoding="utf-8"
    )
    (folder / "dataset_info.json").write_text(
        json.dumps({"demo": {"file_name": "data.jsonl", "formatting": "sharegpt"}}, indent=2) + "\n"
    )
    jsonl(
        "folder_with_readme/data.jsonl",
        [{"messages": [msg("user", f"q{i}"), msg("assistant", f"a{i}")]} for i in range(3)],
    )
    # One article per line, no blank lines between them.
    (OUT / "articles.txt").write_text(
        "".join(f"Article {i}: a whole document on one line.\n" for i in range(250)), encoding="utf-8"
    )
    # Text that default cleaning must leave byte-identical: indented Python, CJK full-width punctuation, superscripts.
    code = (
        'def area(r):\n    """Circle area."""\n    if r < 0:\n        raise ValueError("r < 0")\n\n\n'
        "    return 3.14159 * r ** 2  # πr²\n"
    )
    jsonl(
        "meaning_preserving.jsonl",
        [
            {
                "messages": [
                    msg("user", "Write a Python function for the area of a circle."),
                    msg("assistant", "```python\n" + code + "```"),
                ]
            },
            {
                "messages": [
                    msg("user", "什么是勾股定理？请简要说明，谢谢！"),
                    msg("assistant", "勾股定理：直角三角形中，a² + b² = c²（c 为斜边）；例如，3² + 4² = 5²！"),
                ]
            },
            {
                "messages": [
                    msg("user", "Format this table:\na  |  b\n---|---\n1  |  2"),
                    msg("assistant", "| a | b |\n|---|---|\n|\t1 | 2 |"),
                ]
            },
        ],
    )


if __name__ == "__main__":
    main()
