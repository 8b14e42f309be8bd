"""Regenerate the bad-file corpus (run from anywhere); expected errors are in expected.json."""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent


def chat(user: str, answer: str) -> str:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": msgs}, ensure_ascii=False)


def write(name: str, data: bytes) -> None:
    (HERE / name).write_bytes(data)


def main() -> None:
    good = [chat(f"question {i}", f"answer number {i}") for i in range(3)]
    write("truncated.jsonl", ("\n".join(good[:2]) + '\n{"messages": [{"role": "user", "con').encode())
    rng = random.Random(0)
    write("garbage.jsonl", bytes(rng.randrange(256) for _ in range(4096)))  # has NUL bytes: binary
    write("highbytes.jsonl", b"\xc5\xff\x80\n" + good[0].encode() + b"\n\xfe\xfe\n")  # no NUL: line-level errors
    write("latin1.jsonl", (good[0] + "\n" + chat("où est le café ?", "ici, à côté") + "\n").encode("latin-1"))
    write("bom.jsonl", b"\xef\xbb\xbf" + "\n".join(good).encode() + b"\n")
    write("empty.jsonl", b"")
    write("corrupt.parquet", b"PAR1" + bytes(range(64)) + b"not a footer")
    write("utf16.jsonl", "\n".join(good).encode("utf-16"))
    write(
        "wrong_nesting.jsonl",
        "\n".join(
            [
                json.dumps({"messages": {"role": "user", "content": "hi"}}),
                json.dumps({"messages": [["user", "hi"], {"role": "assistant", "content": "hello"}]}),
                json.dumps([{"role": "user", "content": "hi"}]),
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": {"text": "hi"}},
                            {"role": "assistant", "content": "hello"},
                        ]
                    }
                ),
            ]
        ).encode()
        + b"\n",
    )
    write(
        "mixed.jsonl",
        "\n".join(
            [
                good[0],
                json.dumps({"instruction": "sum 2+2", "output": "4"}),
                json.dumps({"foo": 1}),
                good[1],
            ]
        ).encode()
        + b"\n",
    )
    write(
        "roles.jsonl",
        "\n".join(
            [
                json.dumps({"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]}),
                json.dumps(
                    {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
                ),
                json.dumps(
                    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
                ),
                json.dumps(
                    {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hello"}]}
                ),
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello", "weight": 2},
                        ]
                    }
                ),
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello", "weight": 0},
                        ]
                    }
                ),
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": 42},
                            {"role": "assistant", "content": "ok", "contnet": "x"},
                        ]
                    }
                ),
                json.dumps({"messages": []}),
            ]
        ).encode()
        + b"\n",
    )
    items = [json.loads(g) for g in good]
    write("truncated.json", json.dumps(items, indent=2)[:-40].encode())
    write("latin1.txt", "First paragraph.\n\nCafé au lait, s'il vous plaît.\n".encode("latin-1"))
    write("labels.csv", b'text,label\n"great phone, love it",pos\nterrible,neg\nmeh,neutral\n"broken, ""bad""",\n')
    write(
        "ner.jsonl",
        "\n".join(
            [
                json.dumps({"tokens": ["Ada", "Lovelace", "wrote"], "tags": ["B-PER", "I-PER", "O"]}),
                json.dumps({"tokens": ["Paris", "is"], "tags": ["B-LOC"]}),
                json.dumps({"tokens": ["Rome"], "tags": ["LOC"]}),
                json.dumps({"tokens": ["in", "Rome"], "tags": ["O", "I-LOC"]}),
                json.dumps({"tokens": ["Bob"], "tags": ["B-ORGX"]}),
            ]
        ).encode()
        + b"\n",
    )


if __name__ == "__main__":
    main()
