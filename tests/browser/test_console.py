"""The web console in headless chromium: a real multi-series job with one
bad series, run by a real serve, watched and steered from the pages."""

from __future__ import annotations

import json
import re

import httpx
import oracle
import pyarrow
import pytest
from browser_fixtures import Serve, chromium, shots  # noqa: F401 (fixtures)
from conftest import make_settings

from gpubackfill.candles.synthetic import generate
from gpubackfill.engine import submit
from gpubackfill.jobs.machine import FINAL_JOB_STATES
from gpubackfill.jobs.spec import make_spec
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TOKEN = "console-test-token"
GOOD, BAD = ("EURUSD", "GBPUSD"), "USDJPY"
START, END = "2024-01-01", "2024-01-31"
HOSTILE = "<script>alert(1)</script>\"'&amp;"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BAD_ROW: dict = {}   # the candle the service fixture breaks: its ts and true high
WAIT_MS = 120_000   # a job's run on a loaded two-core host; the test's own limit is the real bound


@pytest.fixture(scope="module")
def service(chdb_home, redis_socket):
    # Tasks of a few chunks (the default packs ~250k candles a task), so
    # that a job is still running when a page pauses or cancels it.
    svc = BackfillService(make_settings(chdb_home, redis_socket, GPUBACKFILL_API_TOKEN=TOKEN,
                                        GPUBACKFILL_TASK_CANDLES="800"))
    for inst in (*GOOD, BAD):
        svc.ingest_table(SeriesKey(inst, "M5"), generate(inst, "M5", START, END))
    # One candle of the bad series with high under low, written past
    # ingest's validation as a broken feed would: its chunk dead-letters.
    bad = generate(BAD, "M5", START, END)
    mid = int(bad.column("ts")[bad.num_rows // 2].as_py())
    BAD_ROW.update(ts=mid, high=float(bad.column("high")[bad.num_rows // 2].as_py()))
    svc.store.command(
        f"ALTER TABLE {svc.store.db}.candles UPDATE high = low - 1 WHERE instrument = '{BAD}' "
        f"AND toUnixTimestamp64Milli(ts) = {mid} SETTINGS mutations_sync = 1")
    return svc


@pytest.fixture(scope="module")
def serve(service):
    srv = Serve(service)
    yield srv
    srv.stop()


@pytest.fixture
def page(chromium, serve):
    ctx = chromium.new_context(base_url=serve.url, viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.dialogs = []

    def on_dialog(d):
        page.dialogs.append((d.type, d.message))
        if d.type == "prompt" and getattr(page, "token", None):
            d.accept(page.token)
        elif d.type == "confirm":
            d.accept()
        else:
            d.dismiss()

    page.on("dialog", on_dialog)
    yield page
    ctx.close()


def form_fill(page, **fields):
    for name, value in fields.items():
        page.fill(f"#new-job [name={name}]", str(value))


JOB = {"instrument": f"{GOOD[0]},{GOOD[1]},{BAD}", "granularity": "M5", "start_date": START,
       "end_date": END, "labels": "enhanced_triple_barrier,mfe_mae", "chunk_size": 150, "workers": 1}


def wait_status(service, job_id, wanted, page):
    page.wait_for_function(
        "s => document.querySelector('#live .live').dataset.status === s", arg=wanted, timeout=WAIT_MS)
    assert service.job(job_id).status == wanted


def test_a_job_from_the_form_to_its_end(page, service, shots):
    """Dry run, queue, watch, pause, resume: the preview is what start
    plans, the counts move, the actions show in status, the grid ends with
    each series' own state."""
    page.token = TOKEN
    page.goto("/ui/new")
    form_fill(page, **JOB)
    page.click("#preview")
    page.wait_for_selector("#plan:not([hidden])")
    shots(page, "console-new-job")
    preview = {k: page.text_content(f"#plan-{k}") for k in ("series", "skipped", "chunks", "candles", "set")}
    planned = submit.plan_backfill(service.store, service.settings,
                                   make_spec(JOB["instrument"], "M5", START, END, JOB["labels"].split(","),
                                             None, 150, 1), False, False)
    spec, chunks, skipped = planned.spec, planned.chunks, planned.skipped
    assert preview["series"] == ", ".join(f"{i} {g}" for i, g in spec.series)
    assert preview["skipped"] == "none" and skipped == []
    assert preview["chunks"].startswith(f"{len(chunks):,} chunks")
    assert preview["set"].startswith(spec.label_set)
    assert service.jobs() == []  # a dry run queues nothing

    page.click("#queue")
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f]{12}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.click("button[data-post$='/pause']")
    page.wait_for_selector("#msg:has-text('paused')")
    assert page.dialogs[0][0] == "prompt"  # asked once for the token...
    wait_status(service, job_id, "paused", page)
    job = service.job(job_id)
    # ...and the job is the one previewed.
    assert [f"{s.instrument} {s.granularity}" for s in job.series] == preview["series"].split(", ")
    assert job.chunks_total == len(chunks) and f"{job.candles_total:,} candles" == preview["candles"]
    assert job.label_set == spec.label_set

    before = page.text_content("#candles")
    # Every re-render of the live part, as the page saw it: the charts'
    # last values and whether the job was final then.
    page.evaluate("""() => { window.seen = [];
        window.snap = () => { const live = document.querySelector('#live .live');
            const tp = document.querySelector('#throughput-chart'), eta = document.querySelector('#eta-chart');
            return live ? [live.dataset.final, tp && tp.dataset.samples, tp && tp.dataset.last,
                           eta && eta.dataset.last] : null; };
        new MutationObserver(() => { const s = window.snap(); if (s) window.seen.push(s); })
            .observe(document.getElementById('live'), {childList: true}); }""")
    paused_charts = page.evaluate("window.snap()")
    page.click("button[data-post$='/resume']")
    page.wait_for_selector("#msg:has-text('running')")
    assert len([d for d in page.dialogs if d[0] == "prompt"]) == 1  # kept for the tab
    # The live part moves without a reload.
    page.wait_for_function("b => document.querySelector('#candles').textContent !== b", arg=before,
                           timeout=WAIT_MS)
    shots(page, "console-job-running")
    page.wait_for_selector("#live .live[data-final='1']", timeout=WAIT_MS)
    job = service.job(job_id)
    assert job.status == "completed_with_errors"
    # The throughput and ETA charts were redrawn in place by the polling
    # (this document's observer saw the re-renders, no reload) with the
    # job's progress, and stopped with it: the last ETA is none left.  How
    # many polls fall while it runs depends on the machine's speed, so the
    # charts are compared with what they showed while the job was paused.
    seen = page.evaluate("window.seen")
    assert seen and seen[-1][0] == "1"
    assert tuple(seen[-1][1:]) != tuple(paused_charts[1:]), (paused_charts, seen)
    assert float(page.get_attribute("#eta-chart", "data-last")) == 0.0
    assert int(page.get_attribute("#throughput-chart", "data-candles")) == job.candles_done
    polls = len(page.evaluate("window.seen"))
    page.wait_for_timeout(2_000)   # more than a poll's 1.5 s: a final job is not polled
    assert len(page.evaluate("window.seen")) == polls
    states = {c.get_attribute("data-series"): c.get_attribute("data-state")
              for c in page.query_selector_all("td.cell[data-series]")}
    assert states == {f"{s.instrument} {s.granularity}": s.status for s in job.series}
    assert {states[f"{i} M5"] for i in GOOD} == {"completed"}
    assert states[f"{BAD} M5"] in ("completed_with_errors", "failed")
    bad_cell = page.query_selector(f"td.cell[data-series='{BAD} M5']")
    assert "errors" in bad_cell.inner_text()  # the state in words, not colour alone
    shots(page, "console-job")

    page.goto("/ui/")
    row = page.query_selector(f"tr[data-job='{job_id}']")
    assert "completed with errors" in row.inner_text()
    parts = {s.get_attribute("data-part"): int(s.get_attribute("data-count"))
             for s in row.query_selector_all(".seg")}
    assert parts == {k: v for k, v in {"done": job.chunks.done, "failed": job.chunks.failed}.items() if v}
    shots(page, "console")
    page.set_viewport_size({"width": 390, "height": 844})
    shots(page, "console-phone")

    page.goto(f"/ui/dlq?job={job_id}")
    assert page.query_selector_all("tr[data-entry]") and len(page.query_selector_all("tr[data-entry]")) == len(
        service.dead_letters(job_id))
    page.set_viewport_size({"width": 1280, "height": 800})
    shots(page, "console-dlq")
    page.goto("/ui/series")
    cell = page.query_selector(f"tr[data-series='{GOOD[0]} M5'] td[data-set='{job.label_set}']")
    assert cell.get_attribute("data-coverage") == "labelled"
    shots(page, "console-series")


def finished_job(service):
    done = [j for j in service.jobs() if j.status in FINAL_JOB_STATES and j.kind == "backfill"
            and j.candles_done]
    if not done:
        pytest.skip("needs the job of test_a_job_from_the_form_to_its_end")
    return done[0]


def test_cancel_from_the_page_shows_in_status(page, service, serve):
    r = httpx.post(f"{serve.url}/jobs", headers=AUTH, json={
        "instrument": GOOD[0], "granularity": "M5", "start_date": START, "end_date": END,
        "labels": ["mfe_mae"], "chunk_size": 100, "workers": 1})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    page.token = TOKEN
    page.goto(f"/ui/jobs/{job_id}")
    page.click("button[data-post$='/cancel']")
    page.wait_for_selector("#msg:has-text('cancelled')")
    assert [d[0] for d in page.dialogs] == ["confirm", "prompt"]
    wait_status(service, job_id, "cancelled", page)


def test_an_action_without_the_token_gets_the_apis_401(page, service, serve):
    job = finished_job(service)
    page.goto(f"/ui/jobs/{job.job_id}")
    page.click("button[data-post='/ui/api/dlq/retry']")   # the prompt is dismissed: no token
    page.wait_for_selector("#msg.bad")
    api = httpx.post(f"{serve.url}/jobs/{job.job_id}/pause")
    assert api.status_code == 401
    assert page.text_content("#msg") == f"401: {api.json()['detail']}"
    console = httpx.post(f"{serve.url}/ui/api/dlq/retry", json={"job_id": job.job_id})
    assert (console.status_code, console.json(), console.headers.get("www-authenticate")) == (
        401, api.json(), api.headers.get("www-authenticate"))
    assert service.job(job.job_id).status == job.status
    assert service.dead_letters(job.job_id)  # nothing re-queued


def test_the_chart_draws_the_stored_barrier_exits(page, service, shots):
    job = finished_job(service)
    inst, frm, to = GOOD[0], "2024-01-10", "2024-01-11"
    page.goto(f"/ui/series/{inst}/M5?set={job.label_set}&from={frm}&to={to}")
    page.wait_for_selector("#chart svg")
    marks = page.evaluate("""[...document.querySelectorAll('#chart g.exit')].map(
        g => [g.dataset.ts, g.dataset.label, g.dataset.exitBars, g.dataset.flags].map(Number))""")
    drawn = {ts: (label, bars, flags) for ts, label, bars, flags in marks}
    assert len(drawn) == len(marks)
    stored = service.export(inst, "M5", set_id=job.label_set, start=frm, end=to).to_pydict()
    expected = {t: (lab, bars, flags) for t, lab, bars, flags in
                zip(stored["ts"], stored["tb_label"], stored["tb_exit_bars"], stored["tb_flags"])
                if lab is not None}
    assert expected and drawn == expected
    assert page.locator("#chart rect.candle").count() == len(stored["ts"])
    assert page.query_selector_all("#lines svg[data-name='mfe']")
    shots(page, "console-chart")
    # The whole month is more bars than are drawn: ClickHouse buckets them.
    page.goto(f"/ui/series/{inst}/M5?set={job.label_set}")
    page.wait_for_selector("#chart svg")
    n = service.store.series_summary(SeriesKey(inst, "M5"))[0]
    candles = page.locator("#chart rect.candle").count()
    assert n > 2_000 >= candles > 0 and "buckets" in page.text_content("#chart-note")


def test_hostile_text_is_shown_as_text(page, service):
    job = finished_job(service)
    # An error message quoting bad input, as the engine records notes.
    service.state.note(job.job_id, "hostile", f"bad value {HOSTILE}")
    page.goto(f"/ui/jobs/{job.job_id}")
    assert f"bad value {HOSTILE}" in page.inner_text("table.events")
    page.goto("/ui/new")
    form_fill(page, instrument="EURUSD", granularity="M5", labels="enhanced_triple_barrier",
              params=json.dumps({"enhanced_triple_barrier": {"tie": HOSTILE}}))
    page.click("#preview")
    page.wait_for_selector("#msg.bad")
    assert repr(HOSTILE) in page.text_content("#msg")  # the message quotes it with repr
    form_fill(page, instrument=HOSTILE, params="")
    page.click("#preview")
    page.wait_for_function("h => document.querySelector('#msg').textContent.includes('invalid instrument')")
    assert repr(HOSTILE) in page.text_content("#msg")
    assert page.dialogs == []                                   # no alert(1) ran
    assert page.evaluate("document.querySelectorAll('main script').length") == 0


def test_the_chart_draws_the_barrier_levels_of_a_bar(page, service, shots):
    """Click a bar: its upper and lower barrier and its vertical one, as
    close * (1 +- pt * sigma) with sigma from the candles (the oracle over
    the whole series), and every bar's with the box ticked; the exits stay
    the stored ones."""
    job = finished_job(service)
    inst, frm, to = GOOD[0], "2024-01-10", "2024-01-11"
    full = generate(inst, "M5", START, END)   # what the service fixture ingested
    ts, close = full.column("ts").to_numpy(), full.column("close").to_numpy()
    sig = oracle.sigma(close)                 # the defaults of the job's set: ewm, span 100
    at = {int(t): k for k, t in enumerate(ts)}

    def expected(t):
        k = at[t]
        return close[k] * (1 + sig[k]), close[k] * (1 - sig[k]), int(ts[k + 24])   # pt = sl = 1, horizon 24

    page.goto(f"/ui/series/{inst}/M5?set={job.label_set}&from={frm}&to={to}")
    page.wait_for_selector("#chart svg")
    assert page.locator("#chart g.levels").count() == 0      # none until a bar is chosen
    stored = service.export(inst, "M5", set_id=job.label_set, start=frm, end=to).to_pydict()
    chosen = stored["ts"][100]
    box = page.locator(f"#chart rect.candle[data-ts='{chosen}']").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#chart g.levels.picked")
    drawn = page.evaluate("""[...document.querySelectorAll('#chart g.levels')].map(
        g => [g.dataset.ts, g.dataset.upper, g.dataset.lower, g.dataset.vertical].map(Number))""")
    assert len(drawn) == 1 and drawn[0][0] == chosen
    up, down, vertical = expected(chosen)
    assert drawn[0][1:3] == pytest.approx([up, down], rel=1e-12) and drawn[0][3] == vertical
    assert float(page.get_attribute("#chart g.levels", "data-sigma")) == pytest.approx(sig[at[chosen]], rel=1e-9)
    assert "vertical barrier" in page.text_content("#picked")
    shots(page, "console-chart-levels")

    page.check("#all-levels")
    page.wait_for_function("n => document.querySelectorAll('#chart g.levels').length === n",
                           arg=len(stored["ts"]))
    drawn = page.evaluate("""[...document.querySelectorAll('#chart g.levels')].map(
        g => [g.dataset.ts, g.dataset.upper, g.dataset.lower, g.dataset.vertical].map(Number))""")
    for t, u, lw, v in drawn:
        eu, el, ev = expected(int(t))
        assert (u, lw, v) == (pytest.approx(eu, rel=1e-12), pytest.approx(el, rel=1e-12), ev)
    marks = page.evaluate("""[...document.querySelectorAll('#chart g.exit')].map(
        g => [g.dataset.ts, g.dataset.label, g.dataset.exitBars].map(Number))""")
    assert sorted(marks) == sorted([t, lab, bars] for t, lab, bars in
                                   zip(stored["ts"], stored["tb_label"], stored["tb_exit_bars"]) if lab is not None)


def test_dead_letters_purged_and_retried_from_the_page(page, service):
    """The DLQ page's buttons: refused without the token (the API's 401,
    nothing changed); purge forgets an entry; after a fix, retry re-queues
    its chunk and serve runs the job again, to its end."""
    job = finished_job(service)
    entries = service.dead_letters(job.job_id)
    assert len(entries) >= 2
    purged, retried = entries[0], entries[1]
    page.goto(f"/ui/dlq?job={job.job_id}")
    for action in ("purge", "retry"):   # the prompt is dismissed: no token
        page.click(f"tr[data-entry='{purged['id']}'] button[data-post='/ui/api/dlq/{action}']")
        page.wait_for_selector("#msg.bad")
        assert page.text_content("#msg") == "401: a valid bearer token is required"
        page.evaluate("document.getElementById('msg').className = ''")
    assert service.dead_letters(job.job_id) == entries

    page.token = TOKEN
    page.click(f"tr[data-entry='{purged['id']}'] button[data-post='/ui/api/dlq/purge']")
    page.wait_for_selector("#msg:has-text('1 entry purged')")
    left = service.dead_letters(job.job_id)
    assert [e["id"] for e in left] == [e["id"] for e in entries[1:]]
    assert service.state.chunk_states(job.job_id)[purged["chunk"]] == "failed"   # purged, not retried
    assert service.job(job.job_id).status == "completed_with_errors"

    # The fix: the bad candle's high back to what the feed sent.
    t = int(BAD_ROW["ts"])
    service.store.command(
        f"ALTER TABLE {service.store.db}.candles UPDATE high = {BAD_ROW['high']!r} WHERE instrument = '{BAD}' "
        f"AND toUnixTimestamp64Milli(ts) = {t} SETTINGS mutations_sync = 1")
    page.click(f"tr[data-entry='{retried['id']}'] button[data-post='/ui/api/dlq/retry']")
    page.wait_for_selector(f"#msg:has-text('job {job.job_id}: 1 chunk(s) re-queued; serve runs the job again')")
    assert retried["id"] not in [e["id"] for e in service.dead_letters(job.job_id)]
    page.goto(f"/ui/jobs/{job.job_id}")
    wait_status(service, job.job_id, "completed", page)   # every failed chunk ran again, as execute does
    assert service.dead_letters(job.job_id) == []
    assert set(service.state.chunk_states(job.job_id).values()) == {"done"}
    assert [e["event"] for e in service.state.events(job.job_id)].count("execute") == 2


def test_update_from_the_series_page(page, service):
    """The series page's update button queues an update job over the
    candles a computed series gained; the job shows in the jobs list."""
    inst = GOOD[1]
    service.ingest_table(SeriesKey(inst, "M5"), generate(inst, "M5", END, "2024-02-02"))
    button = f"tr[data-series='{inst} M5'] button[data-post='/ui/api/update']"
    page.goto("/ui/series")
    page.click(button)   # the prompt is dismissed: no token
    page.wait_for_selector("#msg.bad")
    assert page.text_content("#msg") == "401: a valid bearer token is required"
    assert [j for j in service.jobs() if j.kind == "update"] == []

    page.token = TOKEN
    page.click(button)
    page.wait_for_selector("#msg:has-text('queued')")
    (update,) = [j for j in service.jobs() if j.kind == "update"]
    assert page.text_content("#msg").startswith(f"job {update.job_id} queued")
    assert update.series[0].instrument == inst and update.chunks_total > 0
    page.goto(f"/ui/jobs/{update.job_id}")
    wait_status(service, update.job_id, "completed", page)   # the scheduler ran it
    page.goto("/ui/")
    assert "update" in page.inner_text(f"tr[data-job='{update.job_id}']")


def test_a_source_series_listed_and_updated_from_the_series_page(page, service, shots):
    """A source's series are on the series page, marked with the source; its
    update button updates that source's series (not the built-in table's)."""
    inst = "AUDUSD"
    m5 = generate(inst, "M5", START, END)
    rel = f"{service.store.db}.feed_m5"
    service.store.command(f"CREATE TABLE {rel} (sym String, t DateTime64(3, 'UTC'), o Float64, h Float64, "
                          f"l Float64, c Float64) ENGINE = MergeTree ORDER BY t")

    def feed(t):
        service.store.client.insert_arrow(rel, pyarrow.table({
            "sym": [inst] * t.num_rows, "t": t.column("ts").cast(pyarrow.timestamp("ms", tz="UTC")),
            **{k: t.column(c) for k, c in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"))}}))

    feed(m5.slice(0, m5.num_rows - 300))
    service.sources.add("feed", rel, ["instrument=sym", "ts=t", "open=o", "high=h", "low=l", "close=c"],
                        granularity="M5")
    first = service.start(inst, "M5", chunk_size=500, workers=1, source="feed")
    feed(m5.slice(m5.num_rows - 300))

    row = f"tr[data-source='feed'][data-series='{inst} M5']"
    cell = f"{row} td[data-set='{service.job(first).label_set}']"
    page.token = TOKEN
    page.goto("/ui/series")
    assert "source feed" in page.inner_text(row)
    # Its tail chunk's input changed (the halo reaches the new candles), and candles follow it.
    assert page.get_attribute(cell, "data-coverage") == "stale"
    assert "missing after" in page.inner_text(cell)
    assert page.locator(f"tr[data-source=''][data-series='{inst} M5']").count() == 0
    page.click(f"{row} button[data-post='/ui/api/update']")
    page.wait_for_selector("#msg:has-text('queued')")
    (update,) = [j for j in service.jobs() if j.kind == "update" and j.source == "feed"]
    assert update.series[0].instrument == inst and update.chunks_total > 0
    page.goto(f"/ui/jobs/{update.job_id}")
    wait_status(service, update.job_id, "completed", page)
    page.goto("/ui/series")
    assert page.get_attribute(cell, "data-coverage") == "labelled"

    # Its chart reads the source (the built-in table has no AUDUSD): the
    # exits drawn are the source's labels.
    page.click(f"{cell} a.chart-link")
    page.wait_for_selector("#chart svg")
    assert "source=feed" in page.url and "source feed" in page.inner_text("h1")
    label_set = service.job(first).label_set
    frm, to = "2024-01-10", "2024-01-11"
    page.goto(f"/ui/series/{inst}/M5?source=feed&set={label_set}&from={frm}&to={to}")
    page.wait_for_selector("#chart svg")
    marks = page.evaluate("""[...document.querySelectorAll('#chart g.exit')].map(
        g => [g.dataset.ts, g.dataset.label, g.dataset.exitBars].map(Number))""")
    stored = service.export(inst, "M5", set_id=label_set, start=frm, end=to, source="feed").to_pydict()
    assert sorted(marks) == sorted([t, lab, bars] for t, lab, bars in
                                   zip(stored["ts"], stored["tb_label"], stored["tb_exit_bars"]) if lab is not None)
    assert marks and page.locator("#chart rect.candle").count() == len(stored["ts"])
    shots(page, "console-source-chart")
    # Zooming keeps to the source: the chart's data request names it.
    page.click("[data-zoom='0.5']")
    page.wait_for_function("() => location.search.includes('source=feed')")
