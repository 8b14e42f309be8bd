"""Domain text for continued MLM pretraining of MiniLM: the Lumora support desk's answers as raw text.

    python examples/minilm_mlm/make_data.py examples/minilm_mlm/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tuneforge.data.synthetic import support_desk_dataset


def main(out: Path, n_train: int = 400, n_val: int = 60) -> None:
    out.mkdir(parents=True, exist_ok=True)
    conversations = support_desk_dataset(n_train + n_val, seed=5)
    texts = [" ".join(m.content for m in c.messages if m.role != "system") for c in conversations]
    for name, rows in (("train", texts[:n_train]), ("validation", texts[n_train:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows), encoding="utf-8")
    print(f"wrote {n_train}/{n_val} documents to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "data"))
