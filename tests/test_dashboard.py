"""The web dashboard at /ui/: its files over HTTP, and its pages driven in a real headless Chromium
against a real server on 127.0.0.1 with the embedded worker (and an API token, as deployed)."""

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from opeva_spool.jobs import EMBEDDED_HOST
from opeva_spool.server import Server

from .browser_support import PHONE_WINDOW, WINDOW, screenshot_dir
from .clients import HttpClient
from .conftest import PYTHON, make_settings, wait_for, wait_for_status

TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BROWSER_WAIT = 20.0


# ----- files over HTTP (no browser) ------------------------------------------------------------------

def test_root_redirects_a_browser_to_the_dashboard_and_keeps_its_json_for_api_clients(client):
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    redirected = client.get("/", headers={"Accept": browser_accept})
    assert redirected.status in (302, 303) and redirected.headers["Location"].endswith("/ui/")
    for accept in ("*/*", "application/json", "application/json, text/html;q=0.5", ""):
        answer = client.get("/", headers={"Accept": accept} if accept else {})
        assert answer.status == 200 and answer.json()["service"] == "opeva-spool", accept


def test_dashboard_pages_and_files_have_their_content_types_and_are_revalidated(client):
    for path, content_type in (("/ui/", "text/html"), ("/ui/jobs", "text/html"), ("/ui/job", "text/html"),
                               ("/ui/hosts", "text/html"), ("/ui/configs", "text/html"),
                               ("/ui/datasets", "text/html"), ("/ui/queue", "text/html"),
                               ("/ui/sweeps", "text/html"), ("/ui/sweep", "text/html"), ("/ui/usage", "text/html"),
                               ("/ui/common.js", "text/javascript"),
                               ("/ui/app.css", "text/css"), ("/ui/vendor/uplot/uPlot.iife.min.js", "text/javascript"),
                               ("/ui/vendor/uplot/LICENSE", "text/plain")):
        answer = client.get(path)
        assert answer.status == 200, path
        assert answer.headers["Content-Type"].startswith(content_type), path
        assert answer.headers["Cache-Control"] == "no-cache", path
    page = client.get("/ui/")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/ui/common.js", "/ui/job"):
        etag = {name.lower(): value for name, value in client.get(path).headers.items()}["etag"]
        assert client.get(path, headers={"If-None-Match": etag}).status == 304, path
    assert client.get("/ui").headers["Location"].endswith("/ui/")


def test_pages_are_rendered_from_one_layout_with_their_own_title_and_module(client):
    job_page, hosts_page = client.get("/ui/job").text, client.get("/ui/hosts").text
    assert "<title>Job · opeva-spool</title>" in job_page and '<script type="module" src="job.js">' in job_page
    assert "uPlot.iife.min.js" in job_page and "uPlot" not in hosts_page  # only pages with plots load it
    assert '<table id="hosts">' in hosts_page and "{{" not in hosts_page + job_page


def test_dashboard_serves_nothing_outside_its_folder(client):
    for path in ("/ui/../setup.py", "/ui/%2e%2e/api/ui.py", "/ui/.hidden", "/ui/vendor/../../server.py",
                 "/ui/no-such-file.js", "/ui/layout.html", "/ui/pages/jobs.html"):
        answer = client.get(path)
        assert answer.status == 404 and answer.json()["error"] == "not_found", path


# ----- in a browser ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real server for the module (the browser is shared too): api_token set, embedded worker on."""
    settings = make_settings(tmp_path_factory.mktemp("dashboard"), bind="127.0.0.1", api_token=TOKEN,
                             hosts=(EMBEDDED_HOST, "gpu-a"))
    server = Server(settings).start()
    port = server.listen(port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    http = HttpClient(f"http://127.0.0.1:{port}")
    demo = "experiment: {name: ui, run_name: r1}\ndemo: {episodes: 3, steps: 15, step_seconds: 0.1}\n"
    assert http.post("/experiment-configs/create", json={"file_name": "demo.yaml", "config": demo},
                     headers=AUTH).status == 200
    slow = "experiment: {name: ui, run_name: slow}\ndemo: {episodes: 50, steps: 100, step_seconds: 0.2}\n"
    assert http.post("/experiment-configs/create", json={"file_name": "slow.yaml", "config": slow},
                     headers=AUTH).status == 200
    yield server, http
    server.shutdown()
    thread.join(30)


@dataclass
class Dashboard:
    browser: object  # selenium WebDriver
    http: HttpClient
    open: Callable[..., object]  # open(path, token=TOKEN): the page, with the token in the session


@pytest.fixture
def ui(served, browser):
    """The shared browser on the module's server; fails the test on a JavaScript error in the page."""
    _, http = served
    browser.set_window_size(*WINDOW)

    def open_page(path, token=TOKEN):
        browser.get(http.base_url + "/ui/app.css")  # the dashboard's origin: its sessionStorage
        browser.execute_script("arguments[0] ? sessionStorage.setItem('opeva.token', arguments[0])"
                               " : sessionStorage.clear()", token)
        browser.get(http.base_url + path)
        return browser

    browser.get_log("browser")  # drop what earlier tests left
    yield Dashboard(browser, http, open_page)
    # Script errors, and anything the page's Content-Security-Policy blocked.
    script_errors = [entry for entry in browser.get_log("browser")
                     if entry["level"] == "SEVERE" and entry.get("source") in ("javascript", "security")]
    assert not script_errors, script_errors


def find(browser, css):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, css)


def find_all(browser, css):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, css)


def read_all(browser, css, attribute=None):
    """The text (or ``attribute``) of every element matching ``css``, read in one script: a list that
    refreshes while it is read cannot hand back an element that is already gone."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " e => arguments[1] ? e.getAttribute(arguments[1]) : e.innerText)", css, attribute)


def wait_css(browser, css, predicate=lambda element: element.is_displayed(), timeout=BROWSER_WAIT, message=None):
    """The first element matching ``css`` once ``predicate(element)`` holds."""
    def check():
        for element in find_all(browser, css):
            try:
                if predicate(element):
                    return element
            except Exception:  # replaced while we looked (a refresh re-rendered it): look again
                continue
        return None

    return wait_for(check, timeout, interval=0.1, message=message or f"{css} in the page")


def click(browser, css):
    """Click the element matching ``css``, looking it up again if a refresh replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt():
        try:
            find(browser, css).click()
            return True
        except StaleElementReferenceException:
            return False

    wait_for(attempt, BROWSER_WAIT, interval=0.05, message=f"a click on {css}")


def message_text(browser):
    return wait_css(browser, "#message", message="a message under the nav").text


def confirm(browser, accept=True):
    wait_css(browser, "dialog.confirm[open]", message="the confirmation dialog")
    find(browser, "#confirm-ok" if accept else "#confirm-cancel").click()


def shoot(browser, name):
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(os.path.join(screenshot_dir(), f"{name}.png"))


def submit_from_jobs_page(browser, config, host=EMBEDDED_HOST):
    wait_css(browser, "#jobs[data-loaded]", message="the jobs table")
    find(browser, "#show-submit").click()
    field = wait_css(browser, "#submit-config")
    field.clear()
    field.send_keys(config)
    from selenium.webdriver.support.select import Select

    Select(find(browser, "#submit-host")).select_by_value(host)
    find(browser, "#submit-button").click()


def test_a_job_submitted_from_the_ui_is_followed_to_finished_with_its_plot_and_log_updating(ui):
    browser = ui.browser
    http = ui.http
    ui.open("/ui/")
    submit_from_jobs_page(browser, "demo.yaml")
    wait_for(lambda: "/ui/job?id=" in browser.current_url, BROWSER_WAIT, message="the new job's page")
    job_id = browser.current_url.split("id=")[1]
    # While it runs: the plots gain points and the log grows, without a reload.
    first = int(wait_css(browser, "#history-plot .plot-area",
                         lambda e: int(e.get_attribute("data-points") or 0) > 0).get_attribute("data-points"))
    wait_css(browser, "#history-plot .plot-area", lambda e: int(e.get_attribute("data-points") or 0) > first,
             message="the progress plot to gain points")
    wait_css(browser, "#metrics-plot .plot-area", lambda e: int(e.get_attribute("data-points") or 0) > 0,
             message="the metrics plot to show metrics.jsonl")
    wait_css(browser, "#log", lambda e: "episode 1/3" in e.text, message="the log to show the first episode")
    assert find(browser, "body").get_attribute("data-status") == "running"
    assert find(browser, "#log-state").text == "following"
    shoot(browser, "job-running")
    wait_css(browser, "body[data-status=finished]", message="the job page to show finished")
    wait_css(browser, "#log", lambda e: "done: final reward" in e.text, message="the log's last line")
    wait_css(browser, "#progress[data-pct='100']", message="the progress bar at 100 %")
    wait_css(browser, "#result-table", lambda e: "completed" in e.text and "kpis.average_reward" in e.text,
             message="the result's KPIs as a table")
    wait_css(browser, "#attempts tbody tr", lambda e: "finished" in e.text, message="the attempts table")
    assert int(find(browser, "#history-plot .plot-area").get_attribute("data-points")) >= 15
    assert find(browser, "#log-download").get_attribute("href").endswith(f"/logs/{job_id}")
    find(browser, "#config-details summary").click()
    assert "run_name: r1" in wait_css(browser, "#config").text
    assert http.get(f"/status/{job_id}").json()["status"] == "finished"
    shoot(browser, "job")


def test_stop_from_the_ui_asks_for_confirmation_then_stops_the_running_job(ui):
    browser = ui.browser
    http = ui.http
    job_id = http.post("/run-simulation", json={"config_path": "slow.yaml", "target_host": EMBEDDED_HOST},
                       headers=AUTH).json()["job_id"]
    wait_for_status(http, job_id, "running")
    ui.open(f"/ui/job?id={job_id}")
    wait_css(browser, "body[data-status=running]", message="the job page to show running")
    find(browser, "#stop").click()
    confirm(browser, accept=False)  # cancel: nothing happens
    time.sleep(0.3)
    assert http.get(f"/status/{job_id}").json()["status"] == "running"
    find(browser, "#stop").click()
    confirm(browser)
    wait_css(browser, "body[data-status=stopped]", message="the job page to show stopped")
    assert http.get(f"/status/{job_id}").json()["status"] == "stopped"
    assert not find(browser, "#stop").is_enabled()


def test_resubmit_and_delete_from_the_job_page(ui):
    browser = ui.browser
    http = ui.http
    job_id = http.post("/run-simulation", json={"config_path": "demo.yaml", "target_host": "gpu-a"},
                       headers=AUTH).json()["job_id"]  # no agent for gpu-a: it stays queued
    ui.open(f"/ui/job?id={job_id}")
    wait_css(browser, "body[data-status=queued]")
    find(browser, "#resubmit").click()
    confirm(browser)
    wait_for(lambda: job_id not in browser.current_url, BROWSER_WAIT, message="the resubmitted job's page")
    new_id = browser.current_url.split("id=")[1]
    assert http.get(f"/job-info/{new_id}").json()["config_path"] == "configs/demo.yaml"
    ui.open(f"/ui/job?id={job_id}")
    wait_css(browser, "body[data-status=queued]")
    find(browser, "#delete").click()
    confirm(browser)
    wait_for(lambda: browser.current_url.endswith("/ui/"), BROWSER_WAIT, message="back on the jobs page")
    assert http.get(f"/status/{job_id}").status == 404


def test_the_page_of_an_unknown_job_says_so(ui):
    browser = ui.browser
    ui.open("/ui/job?id=00000000-0000-4000-8000-000000000000")
    text = message_text(browser)
    assert "404" in text and "00000000-0000-4000-8000-000000000000" in text


def test_a_change_without_the_token_is_refused_with_a_message_and_the_token_field_lets_it_through(ui):
    browser = ui.browser
    ui.open("/ui/", token="")
    submit_from_jobs_page(browser, "demo.yaml", host="gpu-a")
    assert "401" in message_text(browser) and "Bearer" in message_text(browser)
    token_field = find(browser, "#token")
    token_field.send_keys(TOKEN)
    find(browser, "h1").click()  # leaving the field saves it for the session
    assert browser.execute_script("return sessionStorage.getItem('opeva.token')") == TOKEN
    find(browser, "#submit-button").click()
    wait_for(lambda: "/ui/job?id=" in browser.current_url, BROWSER_WAIT, message="the submitted job's page")


def test_a_submit_naming_a_missing_config_shows_the_servers_message(ui):
    browser = ui.browser
    ui.open("/ui/")
    submit_from_jobs_page(browser, "no-such-config.yaml")
    text = message_text(browser)
    assert "400" in text and "no-such-config.yaml" in text and "does not exist" in text
    assert browser.current_url.endswith("/ui/")


def test_a_pasted_yaml_config_is_saved_and_submitted_and_a_broken_one_is_refused_at_its_line(ui):
    browser = ui.browser
    http = ui.http
    ui.open("/ui/")
    find(browser, "#show-submit").click()
    find(browser, "#submit-yaml-box summary").click()
    pasted = wait_css(browser, "#submit-yaml")
    pasted.send_keys("experiment: {name: pasted, run_name: p1}\ndemo: {episodes: [1\n")
    find(browser, "#submit-save-as").send_keys("pasted.yaml")
    find(browser, "#submit-button").click()
    text = message_text(browser)
    assert "400" in text and "line" in text
    assert http.get("/experiment-configs/pasted.yaml").status == 404
    pasted.clear()
    pasted.send_keys("experiment: {name: pasted, run_name: p1}\ndemo: {episodes: 1, steps: 2, step_seconds: 0.01}\n")
    find(browser, "#submit-button").click()
    wait_for(lambda: "/ui/job?id=" in browser.current_url, BROWSER_WAIT, message="the submitted job's page")
    job_id = browser.current_url.split("id=")[1]
    assert http.get(f"/job-info/{job_id}").json()["config_path"] == "configs/pasted.yaml"
    wait_for_status(http, job_id, "finished")


def test_invalid_yaml_in_the_config_editor_is_shown_at_its_line_and_a_valid_one_is_saved(ui):
    browser = ui.browser
    http = ui.http
    ui.open("/ui/configs")
    wait_css(browser, "#config-list a[data-file='demo.yaml']").click()
    wait_css(browser, "#config-text", lambda e: "run_name: r1" in e.get_attribute("value"))
    shoot(browser, "configs")
    find(browser, "#new-config").click()
    find(browser, "#config-name").send_keys("broken.yaml")
    text = find(browser, "#config-text")
    text.clear()
    text.send_keys("experiment:\n  name: ok\nalgorithm: [1, 2\nsimulator: {}\n")
    find(browser, "#save-config").click()
    error = wait_css(browser, "#config-error", lambda e: "line" in e.text, message="the YAML error")
    bad = wait_css(browser, "#gutter .bad", message="the bad line marked in the gutter")
    assert f"line {bad.text}" in error.text
    assert "400" in message_text(browser)
    assert http.get("/experiment-configs/broken.yaml").status == 404
    shoot(browser, "configs-error")
    text.clear()
    text.send_keys("experiment:\n  name: ok\n")
    assert not find_all(browser, "#gutter .bad")  # editing clears the mark
    find(browser, "#save-config").click()
    wait_css(browser, "#config-list a[data-file='broken.yaml']", message="the saved config in the list")
    assert http.get("/experiment-configs/broken.yaml").json()["config"] == {"experiment": {"name": "ok"}}


def test_jobs_page_filters_pages_and_updates_live(ui):
    browser = ui.browser
    http = ui.http
    for number in range(55):  # more than a page (50), queued for gpu-a where no agent runs
        http.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "job_name": f"pager-{number}",
                                           "submitted_by": "pager"}, headers=AUTH)
    ui.open("/ui/?submitter=pager")
    rows = lambda: read_all(browser, "#jobs tbody tr[data-job-id]")  # noqa: E731
    wait_for(lambda: len(rows()) == 50, BROWSER_WAIT, message="a full first page")
    assert "pager-54" in rows()[0]  # newest first
    assert find(browser, "#f-submitter").get_attribute("value") == "pager"
    find(browser, "#older").click()
    wait_for(lambda: len(rows()) == 5 and "pager-4" in rows()[0], BROWSER_WAIT, message="the second page")
    find(browser, "#newer").click()
    wait_for(lambda: len(rows()) == 50, BROWSER_WAIT, message="back to the first page")
    search = find(browser, "#f-q")
    search.send_keys("pager-17")
    wait_for(lambda: len(rows()) == 1 and "pager-17" in rows()[0], BROWSER_WAIT, message="the text filter")
    assert "q=pager-17" in browser.current_url
    search.clear()
    search.send_keys("pager-live")
    wait_for(lambda: find_all(browser, "#jobs tbody td.muted"), BROWSER_WAIT, message="no rows for pager-live yet")
    # A job submitted elsewhere shows up without a reload (events, or polling before they exist).
    http.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "job_name": "pager-live",
                                       "submitted_by": "pager"}, headers=AUTH)
    wait_for(lambda: len(rows()) == 1 and "pager-live" in rows()[0], BROWSER_WAIT,
             message="the new job in the table without a reload")


def test_jobs_page_follows_the_event_stream_when_served_and_polls_without_it(ui, served):
    browser = ui.browser
    server, _ = served
    has_events = any(route.rule == "/events" for route in server.app.routes)
    ui.open("/ui/")
    wait_css(browser, "#jobs[data-loaded]")
    # Without /events (an older server) the EventSource fails and the page polls; with it, it listens.
    wait_css(browser, f"body[data-live={'events' if has_events else 'polling'}]",
             message="the page's live mode", timeout=5)


def test_hosts_page_shows_liveness_and_drains_and_resumes_a_host(ui):
    browser = ui.browser
    http = ui.http
    ui.open("/ui/hosts")
    wait_css(browser, f"#hosts tr[data-host='{EMBEDDED_HOST}'][data-state=online]",
             lambda e: "process" in e.text and "online" in e.text, message="the embedded worker online")
    shoot(browser, "hosts")
    button = f"button[data-host='{EMBEDDED_HOST}']"
    click(browser, button)
    wait_css(browser, button, lambda e: "resume" in e.text, message="the host to report draining")
    click(browser, button)
    wait_css(browser, button, lambda e: e.text == "drain", message="the host to take jobs again")
    wait_for(lambda: not any(h["draining"] for h in http.get("/hosts").json()["hosts"]), BROWSER_WAIT,
             message="no host draining")


def test_datasets_page_says_site_data_is_unavailable_without_mongodb_and_keeps_working(ui):
    browser = ui.browser
    ui.open("/ui/datasets")
    note = wait_css(browser, "#sitedata-unavailable", message="the 503 explained")
    assert "MongoDB" in note.text or "mongo" in note.text
    wait_css(browser, "#datasets tbody", lambda e: "no datasets yet" in e.text)
    assert not find(browser, "#build-button").is_enabled()
    shoot(browser, "datasets")


def test_jobs_and_job_pages_read_on_a_phone(ui):
    browser = ui.browser
    http = ui.http
    job_id = http.post("/run-simulation", json={"config_path": "demo.yaml", "target_host": EMBEDDED_HOST},
                       headers=AUTH).json()["job_id"]  # its own finished job: tests may run in any order
    wait_for_status(http, job_id, "finished", timeout=BROWSER_WAIT)
    ui.open("/ui/")
    wait_css(browser, "#jobs[data-loaded]")
    shoot(browser, "jobs")
    # A phone's viewport (a window cannot be narrower than 500 px in headless Chromium).
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": PHONE_WINDOW[0], "height": PHONE_WINDOW[1], "deviceScaleFactor": 2,
                             "mobile": True})
    try:
        browser.refresh()
        wait_css(browser, "#jobs tbody tr[data-job-id]")
        assert browser.execute_script("return window.innerWidth") == PHONE_WINDOW[0]
        # No sideways scrolling of the page (the table scrolls inside its card); minor columns left out.
        assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE_WINDOW[0]
        assert not find(browser, "#jobs th.hide-narrow").is_displayed()
        shoot(browser, "jobs-phone")
        ui.open(f"/ui/job?id={job_id}")
        wait_css(browser, "#history-plot .plot-area", lambda e: int(e.get_attribute("data-points") or 0) > 0)
        assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE_WINDOW[0]
        shoot(browser, "job-phone")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# ----- accounting, the queue, dependencies, sweeps ------------------------------------------

def finished_command_job(http, submitted_by, seconds=1.1):
    job_id = http.post("/run-simulation", json={"command": [PYTHON, "-c", f"import time; time.sleep({seconds})"],
                                                "target_host": EMBEDDED_HOST, "submitted_by": submitted_by},
                       headers=AUTH).json()["job_id"]
    wait_for_status(http, job_id, "finished")
    return job_id


def test_usage_page_shows_each_users_and_each_hosts_jobs_and_hours_as_the_api_counts_them(ui):
    browser = ui.browser
    http = ui.http
    finished_command_job(http, "usage-ui")
    ui.open("/ui/usage")
    api_row = next(r for r in http.get("/usage?by=user").json()["rows"] if r["user"] == "usage-ui")
    wait_for(lambda: read_all(browser, "#usage tr[data-name='usage-ui'] td")[:3]
             == ["usage-ui", str(api_row["jobs"]), str(api_row["attempts"])], BROWSER_WAIT,
             message="the user's row as the API counts it")
    assert find(browser, "#window").text == "(all time)"
    shoot(browser, "usage")
    from selenium.webdriver.support.select import Select

    Select(find(browser, "#u-by")).select_by_value("host")
    wait_css(browser, f"#usage tr[data-name='{EMBEDDED_HOST}']", message="the host's row")
    assert find(browser, "#u-name").text == "host" and "by=host" in browser.current_url
    Select(find(browser, "#u-since")).select_by_value("1")
    wait_css(browser, "#window", lambda e: e.text.startswith("(since"), message="the window shown")


def test_job_page_and_jobs_list_show_queue_wait_run_time_and_each_attempts_log(ui):
    browser = ui.browser
    http = ui.http
    job_id = finished_command_job(http, "times-ui", seconds=1.5)
    info = http.get(f"/job-info/{job_id}").json()
    assert info["run_seconds"] >= 1 and info["queue_wait_seconds"] is not None
    ui.open(f"/ui/job?id={job_id}")
    wait_css(browser, "#job-facts", lambda e: "run time" in e.text and "queue wait" in e.text,
             message="the job's times")
    wait_css(browser, "#attempts a.attempt-log",
             lambda e: e.get_attribute("href").endswith(f"/logs/{job_id}?attempt=1"), message="the attempt's log link")
    assert not find(browser, "#job-waiting").is_displayed()  # it ended: nothing to wait for
    ui.open(f"/ui/?q={job_id}")
    wait_for(lambda: (read_all(browser, f"#jobs tr[data-job-id='{job_id}'] td") or [""])[-1].endswith("s"),
             BROWSER_WAIT, message="the job's run time in the list")  # ran: "1 s" or "2 s"


def test_queue_page_lists_queued_jobs_in_dispatch_order_with_why_each_waits(ui):
    browser = ui.browser
    http = ui.http
    ids = [http.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "priority": priority,
                                              "submitted_by": "queue-ui"}, headers=AUTH).json()["job_id"]
           for priority in (0, 5, 0)]  # no agent for gpu-a: they stay queued
    try:
        order = [item for item in http.get("/queue").json() if item["job_id"] in ids]
        assert order[0]["job_id"] == ids[1]  # the higher priority first
        ui.open("/ui/queue")
        wait_for(lambda: [job_id for job_id in read_all(browser, "#queue tbody tr[data-job-id]", "data-job-id")
                          if job_id in ids] == [item["job_id"] for item in order],
                 BROWSER_WAIT, message="the queued jobs in the API's order")
        for item in order:
            assert item["waiting_reason"]
            wait_css(browser, f"#queue tr[data-job-id='{item['job_id']}']",
                     lambda row, item=item: item["waiting_reason"] in row.text
                     and row.get_attribute("data-position") == str(item["position"]),
                     message=f"{item['job_id']}'s reason and position")
        shoot(browser, "queue")
        ui.open(f"/ui/job?id={order[0]['job_id']}")  # its page says the same, from /status
        wait_css(browser, "#waiting-reason", lambda e: e.text == order[0]["waiting_reason"], message="the reason")
        assert f"position {order[0]['position']} in the queue" in find(browser, "#job-waiting").text
    finally:
        for job_id in ids:
            http.post(f"/stop/{job_id}", headers=AUTH)


def test_a_job_submitted_after_another_waits_with_its_badge_and_links_it_until_its_failure_cancels_it(ui):
    browser = ui.browser
    http = ui.http
    first = http.post("/run-simulation", json={"command": "true", "target_host": "gpu-a", "submitted_by": "deps-ui"},
                      headers=AUTH).json()["job_id"]  # stays queued: no agent for gpu-a
    ui.open("/ui/")
    wait_css(browser, "#jobs[data-loaded]", message="the jobs table")
    find(browser, "#show-submit").click()
    wait_css(browser, "#submit-config").send_keys("demo.yaml")
    find(browser, "#submit-after").send_keys(first)
    find(browser, "#submit-button").click()
    wait_for(lambda: "/ui/job?id=" in browser.current_url, BROWSER_WAIT, message="the submitted job's page")
    waiting = browser.current_url.split("id=")[1]
    info = http.get(f"/job-info/{waiting}").json()
    assert info["status"] == "waiting" and info["after"] == [first]
    ui.open("/ui/?status=waiting&submitter=dashboard")
    wait_css(browser, f"#jobs tr[data-job-id='{waiting}'] .badge.waiting", message="the waiting badge")
    ui.open(f"/ui/job?id={waiting}")
    wait_css(browser, "#job-waiting", lambda e: e.is_displayed() and "waiting for" in e.text and "queued" in e.text
             and e.find_element("css selector", "a").get_attribute("href").endswith(f"job?id={first}"),
             message="what the job waits for, linked")
    shoot(browser, "job-waiting")
    http.post(f"/stop/{first}", headers=AUTH)  # canceled: the dependant can never run
    wait_css(browser, "body[data-status=canceled]", message="the dependant canceled")
    assert "dependency_failed" in find(browser, "#job-facts").text
    assert not find(browser, "#job-waiting").is_displayed()


def test_a_sweep_submitted_from_the_sweeps_page_opens_its_page_and_a_bad_key_or_line_is_refused(ui):
    browser = ui.browser
    http = ui.http
    ui.open("/ui/sweeps")
    wait_css(browser, "#sweeps[data-loaded]", message="the sweeps table")
    find(browser, "#show-submit").click()
    wait_css(browser, "#s-config").send_keys("demo.yaml")
    find(browser, "#s-name").send_keys("ui-form")
    grid = find(browser, "#s-grid")
    grid.send_keys("demo.steps: 2, 3\nnonsense")
    find(browser, "#sweep-button").click()
    assert "grid line 2" in message_text(browser)
    grid.clear()
    grid.send_keys("demo.steps: 2, 3\ndemo.no_such_key: 1")
    find(browser, "#sweep-button").click()
    wait_css(browser, "#message", lambda e: "400" in e.text and "demo.no_such_key" in e.text,
             message="the server's refusal naming the key")
    grid.clear()
    grid.send_keys("demo.steps: 2, 3\ndemo.episodes: 1")
    wait_css(browser, "#s-count", lambda e: e.text == "2 job(s)", message="the number of jobs")
    find(browser, "#sweep-button").click()
    wait_for(lambda: "/ui/sweep?id=" in browser.current_url, BROWSER_WAIT, message="the new sweep's page")
    sweep_id = browser.current_url.split("id=")[1]
    wait_for(lambda: len(find_all(browser, "#sweep-jobs tbody tr[data-job-id]")) == 2, BROWSER_WAIT,
             message="the sweep's two jobs")
    assert "ui-form" in find(browser, "#sweep-name").text and "demo.steps" in find(browser, "#sweep-jobs thead").text
    assert [job["overrides"] for job in http.get(f"/sweeps/{sweep_id}").json()["jobs"]] == [
        {"demo.steps": 2, "demo.episodes": 1}, {"demo.steps": 3, "demo.episodes": 1}]  # numbers stay numbers


def test_sweep_pages_list_a_sweep_sort_its_jobs_by_a_result_value_link_its_jobs_and_delete_it(ui):
    browser = ui.browser
    http = ui.http
    answer = http.post("/sweeps", json={"config_path": "demo.yaml", "grid": {"demo.steps": [2, 3, 4]},
                                        "target_host": EMBEDDED_HOST, "name": "ui-sweep", "submitted_by": "sweep-ui"},
                       headers=AUTH)
    assert answer.status == 200, answer
    sweep_id = answer.json().get("sweep_id") or answer.json()["id"]
    wait_for(lambda: http.get(f"/sweeps/{sweep_id}").json()["counts"].get("finished") == 3, 60,
             message="the sweep's 3 jobs finished")
    ui.open("/ui/sweeps")
    wait_css(browser, f"#sweeps tr[data-sweep-id='{sweep_id}']",
             lambda e: "ui-sweep" in e.text and "3 finished" in e.text, message="the sweep in the list")
    shoot(browser, "sweeps")
    click(browser, f"#sweeps tr[data-sweep-id='{sweep_id}'] a.sweep-link")
    wait_css(browser, "#sweep-jobs[data-loaded]", message="the sweep's jobs")
    assert "demo.steps" in find(browser, "#sweep-jobs thead").text
    find(browser, "#sort-key").send_keys("kpis.average_reward")
    find(browser, "#sort-button").click()
    shown = lambda: read_all(browser, "#sweep-jobs tbody tr", "data-job-id")  # noqa: E731
    for order in ("desc", "asc"):
        wait_css(browser, f"#sweep-jobs[data-sort='kpis.average_reward:{order}']", message=f"sorted {order}")
        expected = [job["job_id"] for job in
                    http.get(f"/sweeps/{sweep_id}?sort=kpis.average_reward&order={order}").json()["jobs"]]
        wait_for(lambda expected=expected: shown() == expected, BROWSER_WAIT, message=f"the API's {order} order")
        assert all(text != "—" for text in read_all(browser, "#sweep-jobs td.value"))
        if order == "desc":
            shoot(browser, "sweep")
            click(browser, "#value-header")  # reverses the order
    assert "sort=kpis.average_reward" in browser.current_url and "order=asc" in browser.current_url
    ui.open(f"/ui/?q={sweep_id}")
    wait_css(browser, "#jobs tbody a.sweep-link", lambda e: e.get_attribute("href").endswith(f"sweep?id={sweep_id}"),
             message="the sweep column's links")
    ui.open(f"/ui/sweep?id={sweep_id}")
    wait_css(browser, "#sweep-jobs[data-loaded]")
    find(browser, "#delete-sweep").click()
    confirm(browser)
    wait_for(lambda: browser.current_url.endswith("/ui/sweeps"), BROWSER_WAIT, message="back on the sweeps page")
    assert http.get(f"/sweeps/{sweep_id}").status == 404


@pytest.fixture
def site_server(tmp_path, mongo_uri, lab_site):
    """A server with site data (the seeded site ``lab`` in nx-27017) and no token."""
    server = Server(make_settings(tmp_path, bind="127.0.0.1", mongo_uri=mongo_uri)).start()
    port = server.listen(port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield HttpClient(f"http://127.0.0.1:{port}")
    server.shutdown()
    thread.join(30)


def test_datasets_page_builds_a_dataset_with_its_progress_charts_site_data_and_deletes_it(browser, site_server,
                                                                                          lab_site):
    browser.set_window_size(*WINDOW)
    browser.get(site_server.base_url + "/ui/datasets")
    wait_css(browser, f"#b-site option[value='{lab_site}']", lambda e: True, message="the site in the build form")
    find(browser, "#b-name").send_keys("ui-lab")
    # datetime-local fields take keys in the browser's locale format: set their value as the form would hold it.
    browser.execute_script("document.querySelector('#b-from').value = '2024-03-30T06:00';"
                           "document.querySelector('#b-until').value = '2024-03-31T20:00';")
    find(browser, "#b-description").send_keys("from the dashboard")
    find(browser, "#build-button").click()
    wait_css(browser, ".build[data-name='ui-lab'] .state", lambda e: e.text == "ready", timeout=60,
             message="the build to finish, shown on the page")
    wait_css(browser, "#datasets tr[data-name='ui-lab']",
             lambda e: "60 min" in e.text and lab_site in e.text and "from the dashboard" in e.text,
             message="the new dataset in the list")
    assert find(browser, "#datasets tr[data-name='ui-lab'] a").get_attribute("href").endswith(
        "/dataset/download/ui-lab")
    # The seeded data is from 2024: the chart shows it with "all".
    from selenium.webdriver.support.select import Select

    Select(find(browser, "#rt-minutes")).select_by_value("")
    wait_css(browser, "#site-plot .plot-area", lambda e: int(e.get_attribute("data-points") or 0) > 0,
             message="the site's data charted")
    shoot(browser, "datasets-with-site-data")
    click(browser, "#datasets tr[data-name='ui-lab'] button.danger")
    confirm(browser)
    wait_for(lambda: not find_all(browser, "#datasets tr[data-name='ui-lab']"), BROWSER_WAIT,
             message="the dataset gone from the list")
    assert "ui-lab" not in [dataset["name"] for dataset in site_server.get("/datasets").json()]
