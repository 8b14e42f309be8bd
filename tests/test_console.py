"""The web console in a real browser (Debian's Chromium, headless, driven by Playwright): sign in,
upload a good and a broken file, a fine-tune on the tiny demo followed to succeeded with its loss
curve drawn, the playground streaming base and fine-tune side by side, monitoring and the feedback
queue, another project's key seeing none of it, and HTML/script injection shown as text.

One service (API in a thread + one worker process) and one browser for the module; the tests run in
order and share what the earlier ones created. Screenshots of every page at 1280x800 and 390x844 go
to tests/artifacts/console/ (gitignored).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx2 as httpx
import pytest

from helpers import tiny_service, write_chat_jsonl
from tuneforge.serve import keys

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
INJECTION = "<img src=x onerror=alert(1)><script>alert(2)</script>"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}

sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian chromium is missing: `make browser` installs it", allow_module_level=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home) as (url, store, _, settings):
        _, key_a = keys.create_key(store, "console-a")
        _, key_b = keys.create_key(store, "console-b")
        worker_env = {
            **os.environ,
            "TUNEFORGE_HOME": str(home),
            "TUNEFORGE_DATABASE_URL": settings.database_url,
            "TUNEFORGE_JOB_LEASE_S": "5",
            "TUNEFORGE_WORKER_THREADS": "1",
        }
        worker = subprocess.Popen([sys.executable, "-m", "tuneforge.serve.worker"], env=worker_env)
        pw = sync_api.sync_playwright().start()
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()) if d.type == "alert" else d.accept())
        external: list[str] = []
        local = (url, "blob:" + url, "data:", "about:")
        page.on("request", lambda r: None if r.url.startswith(local) else external.append(r.url))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        state = {"url": url, "a": key_a, "b": key_b, "home": home, "page": page, "browser": browser}
        state.update(dialogs=dialogs, external=external, store=store)
        try:
            yield state
        finally:
            browser.close()
            pw.stop()
            worker.terminate()
            worker.wait(timeout=30)


def shot(page, name: str) -> None:
    for size, (w, h) in SIZES.items():
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(150)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{size}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})


def no_injected_elements(page) -> None:
    """No element from the injected markup exists and no alert fired: it was shown as text."""
    assert page.locator("img").count() == 0
    assert page.evaluate("document.scripts.length") == 1  # the console's own module only


def test_sign_in_refuses_a_wrong_key_then_accepts_the_project_key(env):
    page = env["page"]
    page.goto(env["url"] + "/")
    shot(page, "signin")
    page.get_by_label("Project API key").fill("tf-wrong-key-0000")
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#signin-error")).to_contain_text("This key was not accepted")
    assert "tf-wrong" not in page.url and page.evaluate("sessionStorage.getItem('tuneforge.key')") is None
    page.get_by_label("Project API key").fill(env["a"])
    page.keyboard.press("Enter")  # keyboard only
    sync_api.expect(page.get_by_role("heading", name="Data", exact=True)).to_be_visible()
    assert env["a"] not in page.url and page.evaluate("document.cookie") == ""
    assert page.evaluate("sessionStorage.getItem('tuneforge.key')") == env["a"]


def test_upload_good_file_shows_report_tokens_and_broken_file_its_line(env, tmp_path):
    page = env["page"]
    good = tmp_path / "train.jsonl"
    write_chat_jsonl(good, 24, seed=0)
    page.get_by_label("Training or validation file (JSONL, JSON, CSV, Parquet)").set_input_files(str(good))
    page.get_by_role("button", name="Upload", exact=True).click()
    report = page.locator("#upload-result")
    sync_api.expect(report).to_contain_text("train.jsonl: valid")
    sync_api.expect(report).to_contain_text("24 records")
    sync_api.expect(report).to_contain_text("Total tokens", timeout=30_000)
    sync_api.expect(page.locator("#file-list")).to_contain_text("train.jsonl")
    shot(page, "data")

    lines = good.read_text().splitlines()
    broken = "\n".join([lines[0], '{"messages": [{"role": "user", "content": "hi"}', lines[2]]) + "\n"
    page.get_by_label("Training or validation file (JSONL, JSON, CSV, Parquet)").set_input_files(
        {"name": "broken.jsonl", "mimeType": "application/json", "buffer": broken.encode()}
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    sync_api.expect(report).to_contain_text("broken.jsonl: refused")
    sync_api.expect(report.locator(".issue").first).to_contain_text("Line 2")
    shot(page, "data-broken")

    # A good file whose name is markup: listed as text, no element created, no alert.
    page.get_by_label("Training or validation file (JSONL, JSON, CSV, Parquet)").set_input_files(
        {"name": INJECTION + ".jsonl", "mimeType": "application/json", "buffer": good.read_bytes()}
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    sync_api.expect(page.locator("#file-list")).to_contain_text("<img src=x onerror=alert(1)>")
    sync_api.expect(report).to_contain_text("Total tokens", timeout=30_000)
    no_injected_elements(page)
    assert env["dialogs"] == []


def test_new_fine_tune_shows_estimate_field_errors_then_runs_to_succeeded_with_loss_curve(env):
    page = env["page"]
    page.goto(env["url"] + "/#/new")
    sync_api.expect(page.locator("#est-trainable")).to_contain_text("of", timeout=30_000)  # before any submit
    train = page.locator("select[name=training_file] option", has_text="train.jsonl").first.get_attribute("value")
    page.get_by_label("Training file").select_option(train)
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("Batch size").fill("4")
    page.get_by_label("Learning rate multiplier").fill("8")
    page.get_by_label("Max steps").fill("6")
    page.get_by_label("Max length (tokens)").fill("96")
    page.get_by_label("Log loss every (steps)").fill("1")
    page.get_by_label("Validate every (steps)").fill("3")
    page.get_by_label("Validation file").select_option(train)
    page.get_by_label("Suffix").fill("not valid!")
    page.locator("input[name=m_r]").fill("4")
    page.wait_for_timeout(400)  # the estimate follows the form after a short pause
    sync_api.expect(page.locator("#est-trainable")).to_contain_text("of", timeout=30_000)
    shot(page, "new")
    page.get_by_role("button", name="Create fine-tune").click()
    suffix_error = page.locator(".field", has=page.get_by_label("Suffix")).locator(".field-error")
    sync_api.expect(suffix_error).to_contain_text("pattern")
    page.locator("input[name=m_r]").fill("0")  # the method's own check, placed at its field
    page.get_by_label("Suffix").fill("console")
    page.get_by_role("button", name="Create fine-tune").click()
    r_error = page.locator(".field", has=page.locator("input[name=m_r]")).locator(".field-error")
    sync_api.expect(r_error).not_to_be_empty()
    page.locator("input[name=m_r]").fill("4")
    page.get_by_role("button", name="Create fine-tune").click()
    sync_api.expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=180_000)
    curve = page.locator("#loss-chart path.series[data-name='training loss']")
    d = curve.get_attribute("d")
    assert d.startswith("M") and d.count("L") >= 4, d  # one point per logged step
    sync_api.expect(page.locator(".event-list")).to_contain_text("The job has successfully completed")
    env["model"] = page.locator("#job-status a").inner_text()
    assert env["model"].startswith("ft:demo:") and ":console:" in env["model"]  # the suffix is in the name
    shot(page, "job")
    page.goto(env["url"] + "/#/jobs")
    sync_api.expect(page.locator("table")).to_contain_text("succeeded")
    shot(page, "jobs")


def test_models_page_downloads_the_adapter_and_says_when_no_eval_report(env):
    page = env["page"]
    page.goto(env["url"] + "/#/models")
    model = env["model"]
    sync_api.expect(page.locator("table")).to_contain_text(model)
    with page.expect_download() as info:
        page.get_by_role("button", name=f"Download adapter of {model}").click()
    names = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes())).namelist()
    assert any(n.endswith("adapter_config.json") for n in names), names
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name=f"Download merged model of {model}").click()
    names = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes())).namelist()
    assert any(n.endswith("config.json") for n in names) and not any("adapter_config" in n for n in names), names
    page.get_by_role("button", name=f"Eval report of {model}").click()
    sync_api.expect(page.locator("#eval-report")).to_contain_text("tuneforge eval")
    shot(page, "models")


def test_playground_streams_base_and_fine_tune_side_by_side_and_shows_markup_as_text(env):
    page = env["page"]
    page.goto(env["url"] + "/#/playground")
    page.get_by_label("Left model").select_option("demo")
    page.get_by_label("Right model").select_option(env["model"])
    page.get_by_label("max tokens").fill("12")
    page.get_by_label("Message", exact=True).fill("My order is late " + INJECTION)
    page.get_by_label("Message", exact=True).press("Enter")
    sync_api.expect(page.locator(".msg.assistant.done")).to_have_count(2, timeout=60_000)
    for i in (0, 1):
        sync_api.expect(page.locator(f"#conv{i} .msg.user p")).to_have_text("My order is late " + INJECTION)
        assert page.locator(f"#conv{i} .msg.assistant p").inner_text().strip(), "empty answer"
        assert "failed" not in page.locator(f"#conv{i} .msg.assistant").get_attribute("class")
    no_injected_elements(page)
    assert env["dialogs"] == []
    shot(page, "playground")


def test_monitoring_charts_and_feedback_queue_export(env):
    page, model = env["page"], env["model"]
    auth = {"Authorization": f"Bearer {env['a']}"}
    for i in range(11):  # an exported training file needs 10 examples, like any upload; one is rejected
        r = httpx.post(
            env["url"] + "/v1/feedback",
            headers=auth,
            json={
                "model": model,
                "messages": [{"role": "user", "content": f"Where is my parcel {i}?"}],
                "completion": "no idea",
                "correction": f"Parcel {i} ships in 2 days.",
            },
        )
        assert r.status_code == 200, r.text
    page.goto(env["url"] + "/#/monitoring")
    sync_api.expect(page.locator("table").first).to_contain_text(model)  # the playground's requests
    sync_api.expect(page.locator(".charts svg").first).to_be_attached()
    heights = (
        page.locator(".charts svg")
        .first.locator("rect.bar")
        .evaluate_all("rs => rs.map(r => +r.getAttribute('height'))")
    )
    assert sum(h > 0 for h in heights) >= 1, heights  # the playground's requests are bars
    # The review goes through the API and is stored: edit, reject, accept; each reviewed item leaves the queue.
    items = page.locator("ol.feedback > li")
    sync_api.expect(items).to_have_count(11)
    page.get_by_label("Correction").first.fill("It ships within 2 days.")
    page.get_by_role("button", name="Save edit").first.click()
    sync_api.expect(page.locator("#toast")).to_contain_text("saved")
    page.get_by_role("button", name="Accept", exact=True).first.click()
    sync_api.expect(items).to_have_count(10)
    rejected_text = items.first.locator("textarea").input_value()
    page.get_by_role("button", name="Reject", exact=True).first.click()
    sync_api.expect(items).to_have_count(9)
    for left in range(8, -1, -1):
        page.get_by_role("button", name="Accept", exact=True).first.click()
        sync_api.expect(items).to_have_count(left)
    sync_api.expect(page.locator("#main")).to_contain_text("0 pending review · 10 accepted")
    sync_api.expect(page.locator("#main")).to_contain_text("No feedback is waiting for review")
    stored = httpx.get(env["url"] + "/v1/feedback?limit=1000", headers=auth).json()["data"]
    ours = [f for f in stored if f["model"] == model]
    assert sorted(f["status"] for f in ours) == ["accepted"] * 10 + ["rejected"]
    edited = next(f for f in ours if f["edited_correction"] == "It ships within 2 days.")
    assert edited["correction"].startswith("Parcel ") and edited["status"] == "accepted"  # the original is kept
    page.get_by_role("button", name="Export accepted as a training file").click()
    sync_api.expect(page.locator("#toast")).to_contain_text("Exported 10 accepted corrections")
    sync_api.expect(page.locator("#toast")).to_contain_text("skipped 1 not accepted")
    files = httpx.get(env["url"] + "/v1/files", headers=auth).json()["data"]
    exported = next(f for f in files if f["filename"] == "feedback.jsonl")
    content = httpx.get(env["url"] + f"/v1/files/{exported['id']}/content", headers=auth).text
    answers = [json.loads(line)["messages"][-1]["content"] for line in content.splitlines()]
    assert "It ships within 2 days." in answers and len(answers) == 10 and rejected_text not in answers
    sync_api.expect(page.locator("#main")).to_contain_text("Drift", timeout=30_000)
    shot(page, "monitoring")


def test_another_project_sees_none_of_it_and_no_request_left_the_server(env):
    context = env["browser"].new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(env["url"] + "/")
    page.get_by_label("Project API key").fill(env["b"])
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#file-list")).to_contain_text("No files yet.")
    page.goto(env["url"] + "/#/jobs")
    sync_api.expect(page.locator("#main")).to_contain_text("No jobs yet.")
    page.goto(env["url"] + "/#/models")
    sync_api.expect(page.locator("table")).to_contain_text("demo")
    assert "ft:" not in page.locator("table").inner_text()
    page.goto(env["url"] + "/#/monitoring")
    sync_api.expect(page.locator("#main")).to_contain_text("No requests yet")
    context.close()
    assert env["external"] == []  # no CDN, no other host
