#!/usr/bin/env python3
"""The manager's dashboard in headless Chromium (Debian's chromium, chromium-driver,
python3-selenium): starts a real kvpool-manager and kvpool-worker on loopback, sends
traffic with the kvpool CLI, loads the page and checks that the live charts render
with non-zero data, that the cache-size view draws the predicted hit-rate curve of
the traffic and its slider moves the prediction, that moving the calculator's sliders changes its numbers (and
that they match `kvpool calc`'s arithmetic), that a bench report.json draws, and that
CSV export works. Saves screenshots under --out.

Exit 77 (ctest: skipped) when Chromium, its driver or Selenium is missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kvpool_process import Process  # noqa: E402

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
except ImportError:
    print("python3-selenium is not installed: skipping", file=sys.stderr)
    sys.exit(77)

GIB = 1024 ** 3


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def wait_js(driver, script, what, timeout=30):
    deadline = time.time() + timeout
    value = None
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            print(f"ok: {what}")
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} (last value {value!r})")


def send_traffic(cli, worker, stop):
    """Requests with a shared 64-token prefix (hits) and unique ones (misses, and
    evictions once the 48-block pool is full of cached blocks)."""
    shared = ",".join(str(7 + i) for i in range(64))
    i = 0
    while not stop.is_set():
        unique = ",".join(str(1000 + 97 * i + j) for j in range(40))
        ids = f"{shared},{i}" if i % 2 == 0 else unique
        subprocess.run([cli, "generate", "--server", worker, "--token-ids", ids,
                        "--max-tokens", "12", "--mode", "paged"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        i += 1


def fake_report():
    """A report.json in docs/bench-report.md's schema (the viewer's input)."""
    modes = {m: {"avg_token_latency_s": s, "ttft_s": t} for m, s, t in
             [("none", 0.08, 0.05), ("contiguous", 0.013, 0.05), ("paged", 0.0135, 0.05)]}
    return {
        "schema_version": 1, "date": "2026-11-23T00:00:00Z",
        "model": {"name": "gpt2", "device": "cpu"}, "machine": {"cpu_model": "test cpu"},
        "modes": modes,
        "scenarios": {
            "context_sweep": {"points": [{"context": c, "none": c * 1e-4, "contiguous": 0.012,
                                          "paged": 0.0121} for c in (64, 256, 1000)]},
            "throughput": {"points": [{"concurrency": c, "contiguous": {"tokens_per_s": 30.0 * c},
                                       "paged": {"tokens_per_s": 50.0 * c}} for c in (1, 4, 16)]},
            "cache_size": {"pool_sizes": [{"pool_over_working_set": r, "hit_rate": min(r, 0.94),
                                           "tokens_per_s": 100 * r} for r in (0.25, 0.5, 1.0, 2.0)]},
        },
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True, help="where kvpool, kvpool-manager, kvpool-worker are")
    parser.add_argument("--out", required=True, help="directory for the screenshots")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        print("chromium / chromium-driver not installed: skipping", file=sys.stderr)
        return 77
    os.makedirs(args.out, exist_ok=True)
    downloads = tempfile.mkdtemp(prefix="kvpool-dashboard-")

    manager = Process([f"{args.bin_dir}/kvpool-manager", "--listen", "127.0.0.1:0", "--http",
                       "127.0.0.1:0", "--model", "tiny-gpt2", "--num-blocks", "48",
                       "--lease-ttl-ms", "800"])
    worker = None
    driver = None
    stop = threading.Event()
    try:
        grpc = manager.wait_for("kvpool-manager listening on ")
        http = manager.wait_for("http on ")
        worker = Process([f"{args.bin_dir}/kvpool-worker", "--manager", grpc, "--listen",
                          "127.0.0.1:0", "--model", "tiny-gpt2", "--threads", "1"])
        worker_address = worker.wait_for("kvpool-worker listening on ")
        worker.wait_for("kvpool-worker attached to ")
        traffic = threading.Thread(target=send_traffic,
                                   args=(f"{args.bin_dir}/kvpool", worker_address, stop))
        traffic.start()

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
            options.add_argument(flag)
        options.add_experimental_option("prefs", {"download.default_directory": downloads})
        driver = webdriver.Chrome(service=Service(driver_bin), options=options)
        driver.get(f"http://{http}/")
        check(driver.execute_script("return typeof Chart !== 'undefined'"),
              "Chart.js is served by the manager and loaded")

        # Live view: charts with non-zero data, after a few polls of traffic.
        wait_js(driver, "return kvpoolDashboard.polls >= 3", "the page polls /api/stats")
        series = "kvpoolDashboard.charts['{}'].data.datasets[{}].data.some(v => v > 0)"
        wait_js(driver, "return " + series.format("chart-blocks", 1) + " || " +
                series.format("chart-blocks", 0), "the KV blocks chart shows blocks in use or cached")
        wait_js(driver, "return " + series.format("chart-hit-rate", 1), "the hit-rate chart shows hits")
        wait_js(driver, "return " + series.format("chart-latency", 0) + " && " +
                series.format("chart-latency", 1), "the latency chart shows TTFT and inter-token latency")
        wait_js(driver, "return " + series.format("chart-requests", 0), "the requests chart shows running requests")
        wait_js(driver, "return kvpoolDashboard.prev.evictions_total > 0", "evictions happen in the small pool")
        painted = driver.execute_script("""
            const c = document.getElementById('chart-blocks');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;""")
        check(painted > 1000, f"the blocks canvas is painted ({painted} pixels)")
        check(driver.find_element(By.ID, "tile-hit-rate").text.endswith("%"), "the hit-rate tile has a number")
        check(driver.find_element(By.CSS_SELECTOR, "#workers tbody tr") is not None, "the workers table has a row")
        driver.save_screenshot(os.path.join(args.out, "dashboard-live.png"))

        # Cache size: the manager's predicted hit-rate curve for this traffic. Every other
        # request repeats a 4-block prefix with about 4 other blocks between repeats, so
        # the curve is a step: no hits in a 2-block pool, the shared share of the prompt
        # tokens (~60%) from ~10 blocks on, and its knee where the step ends.
        wait_js(driver, "const c = kvpoolDashboard.cacheSize; return c.data && c.predicted > 0",
                "the cache-size view reads a predicted hit rate")
        shape = driver.execute_script("""
            const d = kvpoolDashboard.cacheSize.data;
            const c = d.curves.find((x) => x.tenant === '' && !x.window);
            const at = (b) => c.hit_rate[d.cache_blocks.indexOf(b)];
            let monotone = true;
            for (let i = 1; i < c.hit_rate.length; i++) monotone = monotone && c.hit_rate[i] >= c.hit_rate[i - 1];
            return {monotone, at2: at(2), at48: at(48), at192: at(192), knee: c.knee_blocks,
                    pool: d.pool_blocks};""")
        check(shape["pool"] == 48 and shape["monotone"], f"the curve is non-decreasing in pool size {shape}")
        check(shape["at2"] < 0.05 and 0.45 < shape["at48"] < 0.7 and abs(shape["at192"] - shape["at48"]) < 0.02,
              f"the curve is a step from ~0 to the shared share {shape}")
        check(4 <= shape["knee"] <= 48, f"the knee ends the step {shape}")
        set_slider = ("const e = document.getElementById('cache-slider'); e.value = arguments[0];"
                      "e.dispatchEvent(new Event('input')); return kvpoolDashboard.cacheSize.predicted;")
        low = driver.execute_script(set_slider, "0")
        text_low = driver.find_element(By.ID, "cache-readout").text
        high = driver.execute_script(set_slider, "1000")
        text_high = driver.find_element(By.ID, "cache-readout").text
        check(low < 0.05 < high and text_low != text_high and "predicted hit rate" in text_high,
              f"moving the pool-size slider moves the predicted hit rate ({text_low!r} -> {text_high!r})")
        check("knee:" in driver.find_element(By.ID, "cache-knee").text, "the knee is named")
        check(driver.execute_script(
            "return kvpoolDashboard.charts['chart-cache-size'].data.datasets[0].data.length") > 100,
            "the curve is drawn")
        driver.execute_script("document.getElementById('chart-cache-size').scrollIntoView()")
        driver.save_screenshot(os.path.join(args.out, "dashboard-cache-size.png"))
        driver.execute_script("window.scrollTo(0, 0)")

        csv = driver.execute_script("return kvpoolDashboard.liveCsv()")
        lines = csv.strip().split("\n")
        check(lines[0].startswith("time_s,free_blocks,cached_blocks,in_use_blocks") and len(lines) >= 4,
              f"the live CSV has a header and {len(lines) - 1} rows")
        driver.find_element(By.ID, "export-live").click()
        wait_js(driver, "return true", "export clicked")
        deadline = time.time() + 10
        while time.time() < deadline and not os.path.exists(os.path.join(downloads, "kvpool-live.csv")):
            time.sleep(0.2)
        check(os.path.exists(os.path.join(downloads, "kvpool-live.csv")), "the Export CSV button downloads kvpool-live.csv")

        # Calculator: the arithmetic of `kvpool calc`, and sliders that move the numbers.
        driver.find_element(By.CSS_SELECTOR, "button[data-tab=calculator]").click()
        wait_js(driver, "return kvpoolDashboard.models.length > 1", "the calculator loaded /api/models")
        Select(driver.find_element(By.ID, "calc-model")).select_by_value("llama-7b")
        Select(driver.find_element(By.ID, "calc-dtype")).select_by_visible_text("fp16")

        def set_range(element_id, value):
            driver.execute_script(
                "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                "e.dispatchEvent(new Event('input'));", element_id, str(value))

        set_range("calc-seq", 4096)
        set_range("calc-batch", 1)
        calc = driver.execute_script("return kvpoolDashboard.calc")
        check(calc["kv_bytes_batch"] == 2 * GIB, "llama-7b, 4096 tokens, fp16, batch 1 = 2 GiB")
        check(driver.find_element(By.ID, "calc-batch-bytes").text.startswith("2 GiB"), "the table shows 2 GiB")
        set_range("calc-batch", 32)
        check(driver.execute_script("return kvpoolDashboard.calc.kv_bytes_batch") == 64 * GIB,
              "batch 32 = 64 GiB")
        before = driver.find_element(By.ID, "calc-batch-bytes").text
        slider = driver.find_element(By.ID, "calc-batch")
        slider.click()
        slider.send_keys(Keys.END)  # the keyboard moves the slider to its maximum
        after = driver.find_element(By.ID, "calc-batch-bytes").text
        check(after != before and driver.find_element(By.ID, "calc-batch-out").text == "256",
              f"moving the batch slider changes the numbers ({before!r} -> {after!r})")
        Select(driver.find_element(By.ID, "calc-model")).select_by_value("llama-70b")
        set_range("calc-batch", 1)
        check(driver.execute_script("return kvpoolDashboard.calc.kv_bytes_per_token") == 2 * 80 * 8 * 128 * 2,
              "llama-70b's GQA (8 KV heads) sets the bytes per token")
        check("GQA" in driver.find_element(By.ID, "calc-attention").text, "llama-70b is labelled GQA")
        check(driver.execute_script("return kvpoolDashboard.charts['chart-calc'].data.datasets[3].data.length") > 3,
              "the calculator's curve is drawn")
        driver.save_screenshot(os.path.join(args.out, "dashboard-calculator.png"))

        # Bench report viewer.
        report = os.path.join(downloads, "report.json")
        with open(report, "w") as f:
            json.dump(fake_report(), f)
        driver.find_element(By.CSS_SELECTOR, "button[data-tab=report]").click()
        driver.find_element(By.ID, "report-file").send_keys(report)
        wait_js(driver, "return kvpoolDashboard.report !== null", "the report loads")
        bars = driver.execute_script("return kvpoolDashboard.charts['chart-report-modes'].data.datasets[0].data")
        check([round(b, 3) for b in bars] == [80.0, 13.0, 13.5], f"the modes chart shows ms per token {bars}")
        paged = driver.execute_script("return kvpoolDashboard.charts['chart-report-throughput'].data.datasets[1].data")
        check(paged == [50, 200, 800], "the throughput chart shows the paged curve")
        check(len(driver.execute_script("return kvpoolDashboard.reportCsv()").strip().split("\n")) > 10,
              "the report exports as CSV")
        driver.save_screenshot(os.path.join(args.out, "dashboard-report.png"))
        print(f"screenshots in {args.out}")
        return 0
    finally:
        stop.set()
        if driver:
            driver.quit()
        if worker:
            worker.stop()
        manager.stop()
        shutil.rmtree(downloads, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
