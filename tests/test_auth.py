"""Roles and the audit trail: tokens from a hashed tokens file, 401/403 as JSON, the role of each route, the
submitter bound to the token, owner-only stop/delete, the single api_token as an admin, and one audit line
per change. Through the real app in process (WsgiClient) and over real HTTP (waitress)."""

import concurrent.futures
import datetime as dt
import json
import os

import pytest

from opeva_spool import auth, cli
from opeva_spool.exceptions import Forbidden
from opeva_spool.server import Server

from .clients import ThreadedServer, WsgiClient
from .conftest import demo_config, make_settings, wait_for

API_TOKEN = "the-legacy-admin-token"
# user -> roles; a worker's user name is the host it works as
USERS = {"alice": "read,submit", "bob": "read,submit", "reader": "read", "blind": "submit", "root": "admin",
         "gpu-a": "worker"}
IDLE_HOST = "gpu-b"  # configured, no agent: its jobs stay queued


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A tokens file with a token per USERS entry: (path, {user: token})."""
    path = str(tmp_path_factory.mktemp("tokens") / "tokens.yaml")
    return path, {user: auth.add_token(path, user, auth.parse_roles(roles))[1] for user, roles in USERS.items()}


@pytest.fixture
def served(tmp_path, tokens):
    """A Server with the tokens file and api_token (reads closed, as with a tokens file by default)."""
    servers = []

    def serve(**overrides):
        settings = make_settings(tmp_path, **{"tokens_file": tokens[0], "api_token": API_TOKEN,
                                              "embedded_worker": False, **overrides})
        server = Server(settings).start()
        servers.append(server)
        return server, WsgiClient(server.app)

    yield serve
    for server in servers:
        server.close()


@pytest.fixture
def client(served):
    return served()[1]


def as_user(client, tokens, user):
    """A client sending ``user``'s token on every request."""
    token = API_TOKEN if user == "api_token" else tokens[1][user]

    class Signed:
        def request(self, method, url, **kw):
            return client.request(method, url, headers={**bearer(token), **kw.pop("headers", {})}, **kw)

        def get(self, url, **kw):
            return self.request("GET", url, **kw)

        def post(self, url, **kw):
            return self.request("POST", url, **kw)

        def delete(self, url, **kw):
            return self.request("DELETE", url, **kw)

    return Signed()


def submit(signed, **fields):
    answer = signed.post("/run-simulation", json={"command": "true", "target_host": IDLE_HOST, **fields})
    assert answer.status == 200, answer.text
    return answer.json()


def audit_lines(root):
    path = os.path.join(root, "audit", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d") + ".jsonl")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


# ----- 401 / 403 -------------------------------------------------------------------------------------


def test_no_token_or_a_bad_one_is_401_as_json_and_a_missing_role_is_403_naming_it(client, tokens):
    for headers in ({}, bearer("nope"), bearer(tokens[1]["alice"] + "x"), {"Authorization": "Basic YTpi"}):
        answer = client.get("/jobs", headers=headers)
        assert answer.status == 401 and answer.json()["error"] == "unauthorized", answer.text
        challenge = {name.lower(): value for name, value in answer.headers.items()}["www-authenticate"]
        assert answer.json()["detail"] and challenge.startswith("Bearer")
    refused = as_user(client, tokens, "reader").post("/run-simulation", json={"command": "true"})
    assert refused.status == 403 and refused.json()["error"] == "forbidden" and refused.json()["role"] == "submit"
    blind = as_user(client, tokens, "blind").get("/jobs")
    assert blind.status == 403 and blind.json()["role"] == "read"


MATRIX = [  # (user, method, path, expected status)
    ("reader", "GET", "/jobs", 200),
    ("reader", "GET", "/hosts", 200),
    ("reader", "GET", "/metrics", 200),
    ("reader", "POST", "/hosts/gpu-a/drain", 403),
    ("alice", "POST", "/hosts/gpu-a/drain", 403),
    ("alice", "DELETE", "/hosts/gpu-a/drain", 403),
    ("root", "POST", "/hosts/gpu-a/drain", 200),
    ("api_token", "DELETE", "/hosts/gpu-a/drain", 200),
    ("gpu-a", "GET", "/jobs", 403),
    ("gpu-a", "POST", "/run-simulation", 403),
    ("root", "GET", "/jobs", 200),
    ("api_token", "GET", "/jobs", 200),
    (None, "GET", "/health", 200),
    (None, "GET", "/ui/", 200),
    (None, "GET", "/ui/common.js", 200),
    (None, "GET", "/jobs", 401),
    (None, "GET", "/events?last_event_id=x", 401),
    (None, "POST", "/hosts/gpu-a/drain", 401),
]


@pytest.mark.parametrize(("user", "method", "path", "expected"), MATRIX)
def test_each_role_reaches_what_it_may_and_nothing_else(client, tokens, user, method, path, expected):
    caller = client if user is None else as_user(client, tokens, user)
    answer = caller.request(method, path)
    assert answer.status == expected, answer.text
    if expected >= 400:
        assert answer.json()["error"] == {401: "unauthorized", 403: "forbidden"}[expected]


def test_with_only_api_token_reads_stay_open_and_changes_need_it_as_before(served):
    _, client = served(tokens_file="")
    assert client.get("/jobs").status == 200
    assert client.post("/run-simulation", json={"command": "true"}).status == 401
    answer = client.post("/run-simulation", headers=bearer(API_TOKEN),
                         json={"command": "true", "target_host": IDLE_HOST, "submitted_by": "carol"})
    assert answer.status == 200 and answer.json()["submitted_by"] == "carol"  # an admin may name anyone


def test_open_reads_let_reads_through_without_a_token_but_never_changes(served, tokens):
    _, client = served(open_reads="true")
    assert client.get("/jobs").status == 200
    assert client.post("/run-simulation", json={"command": "true"}).status == 401
    assert as_user(client, tokens, "alice").get("/jobs").status == 200


def test_with_auth_off_everybody_may_do_everything(served):
    _, client = served(tokens_file="", api_token="")
    job = client.post("/run-simulation", json={"command": "true", "target_host": IDLE_HOST, "submitted_by": "x"})
    assert job.status == 200 and job.json()["submitted_by"] == "x"
    assert client.post("/hosts/gpu-a/drain").status == 200


def test_the_token_cookie_opens_reads_but_never_authorises_a_change(client, tokens):
    cookie = {"Cookie": f"{auth.TOKEN_COOKIE}={tokens[1]['alice']}"}
    assert client.get("/jobs", headers=cookie).status == 200
    assert client.post("/run-simulation", headers=cookie, json={"command": "true"}).status == 401
    assert client.get("/jobs", headers={"Cookie": f"{auth.TOKEN_COOKIE}=stale"}).status == 401


def test_where_reads_are_open_a_stale_cookie_counts_as_none_but_a_bad_header_is_refused(served):
    _, client = served(tokens_file="")
    assert client.get("/jobs", headers={"Cookie": f"{auth.TOKEN_COOKIE}=another-servers-token"}).status == 200
    assert client.get("/jobs", headers=bearer("mistyped")).status == 401


# ----- the tokens file ---------------------------------------------------------------------------------


def test_the_tokens_file_keeps_salted_hashes_never_the_tokens(tokens):
    path, issued = tokens
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    for token in issued.values():
        assert token not in text and token.split(".", 1)[1] not in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    entries = auth.read_tokens(path)
    assert all(entry.hash.startswith("scrypt$") for entry in entries)
    assert len({entry.hash.split("$")[4] for entry in entries}) == len(entries)  # a salt each
    assert auth.hash_token("same") != auth.hash_token("same")
    alice = next(entry for entry in entries if entry.user == "alice")
    assert auth.verify_token(issued["alice"], alice.hash) and not auth.verify_token(issued["bob"], alice.hash)


def test_a_token_added_or_revoked_while_the_server_runs_takes_effect_without_a_restart(served, tmp_path):
    path = str(tmp_path / "live-tokens.yaml")
    _, client = served(tokens_file=path)
    _, token = auth.add_token(path, "dave", frozenset({"read"}))
    wait_for(lambda: client.get("/jobs", headers=bearer(token)).status == 200, message="the new token accepted")
    auth.remove_tokens(path, "dave")
    wait_for(lambda: client.get("/jobs", headers=bearer(token)).status == 401, message="the revoked token refused")


def test_a_broken_tokens_file_grants_nothing_until_fixed_and_api_token_still_works(served, tmp_path):
    path = str(tmp_path / "broken-tokens.yaml")
    _, token = auth.add_token(path, "erin", frozenset({"read"}))
    _, client = served(tokens_file=path)
    assert client.get("/jobs", headers=bearer(token)).status == 200
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("- [unclosed\n")
    wait_for(lambda: client.get("/jobs", headers=bearer(token)).status == 401, message="the broken file refused")
    assert client.get("/jobs", headers=bearer(API_TOKEN)).status == 200


def test_tokens_added_at_the_same_time_all_land(tmp_path):
    path = str(tmp_path / "busy-tokens.yaml")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: auth.add_token(path, f"user{n}", frozenset({"read"})), range(8)))
    assert sorted(entry.user for entry in auth.read_tokens(path)) == [f"user{n}" for n in range(8)]


def test_token_commands_print_the_token_once_list_without_hashes_and_revoke(tmp_path, capsys):
    path = str(tmp_path / "cli-tokens.yaml")
    assert cli.main(["token", "add", "frank", "--roles", "submit,read", "--file", path]) == 0
    token = capsys.readouterr().out.strip()
    [entry] = auth.read_tokens(path)
    assert entry.user == "frank" and entry.roles == {"read", "submit"} and auth.verify_token(token, entry.hash)
    assert cli.main(["token", "ls", "--json", "--file", path]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"id": entry.id, "user": "frank", "roles": ["read", "submit"], "created_at": entry.created_at}]
    assert cli.main(["token", "add", "gpu-z", "--roles", "worker,bogus", "--file", path]) == cli.EXIT_REFUSED
    assert cli.main(["token", "rm", "frank", "--file", path]) == 0
    assert auth.read_tokens(path) == []
    assert cli.main(["token", "rm", "frank", "--file", path]) == cli.EXIT_REFUSED


def test_the_command_line_client_works_with_a_token_over_http(served, tokens, capsys):
    server, _ = served()
    with ThreadedServer(server.app) as http:
        base = ["--server", http.base_url, "--client-config", os.devnull]
        assert cli.main(["jobs", *base]) == cli.EXIT_ERROR_ANSWER
        assert "Bearer" in capsys.readouterr().err
        token = ["--token", tokens[1]["alice"]]
        assert cli.main(["submit", "--command", "true", "--target-host", IDLE_HOST, "-q", *base, *token]) == 0
        job_id = capsys.readouterr().out.strip()
        assert cli.main(["jobs", "--json", *base, *token]) == 0
        [job] = json.loads(capsys.readouterr().out)
        assert (job["job_id"], job["submitted_by"]) == (job_id, "alice")


# ----- who submitted, who may change -----------------------------------------------------------------


def test_submitted_by_is_the_tokens_user_whatever_the_body_says(client, tokens):
    alice = as_user(client, tokens, "alice")
    answer = submit(alice, submitted_by="bob")
    assert answer["submitted_by"] == "alice"
    assert alice.get(f"/job-info/{answer['job_id']}").json()["submitted_by"] == "alice"
    assert submit(as_user(client, tokens, "root"), submitted_by="carol")["submitted_by"] == "carol"
    assert submit(as_user(client, tokens, "root"))["submitted_by"] == "root"


def test_a_submitter_stops_and_deletes_only_their_own_jobs_and_an_admin_any(client, tokens):
    alice, bob, root = (as_user(client, tokens, user) for user in ("alice", "bob", "root"))
    first, second = submit(alice)["job_id"], submit(alice)["job_id"]
    refused = bob.post(f"/stop/{first}")
    assert refused.status == 403 and refused.json()["owner"] == "alice"
    assert bob.delete(f"/job/{first}").status == 403
    assert alice.get(f"/status/{first}").json()["status"] == "queued"  # nothing changed
    assert alice.post(f"/stop/{first}").json()["status"] == "canceled"
    assert alice.delete(f"/job/{first}").status == 200
    assert root.post(f"/stop/{second}").status == 200
    assert root.get(f"/job-info/{second}").json()["status"] == "canceled"
    assert as_user(client, tokens, "api_token").delete(f"/job/{second}").status == 200


def test_a_resubmission_belongs_to_whoever_resubmits(client, tokens):
    job_id = submit(as_user(client, tokens, "alice"))["job_id"]
    again = as_user(client, tokens, "bob").post(f"/resubmit/{job_id}", json={})
    assert again.status == 200 and again.json()["submitted_by"] == "bob"


def test_a_sweep_is_stopped_or_deleted_only_by_its_submitter_or_an_admin(client, tokens):
    alice, bob = as_user(client, tokens, "alice"), as_user(client, tokens, "bob")
    body = {"config": demo_config(), "target_host": IDLE_HOST, "grid": {"demo.episodes": [1, 2]}}
    sweep_id = alice.post("/sweeps", json=body).json()["sweep_id"]
    assert bob.post(f"/sweeps/{sweep_id}/stop").status == 403
    assert bob.delete(f"/sweeps/{sweep_id}").status == 403
    assert alice.get(f"/sweeps/{sweep_id}").json()["counts"] == {"queued": 2}
    assert alice.post(f"/sweeps/{sweep_id}/stop").json()["canceled"] == 2
    assert as_user(client, tokens, "root").delete(f"/sweeps/{sweep_id}").status == 200


# ----- workers -----------------------------------------------------------------------------------------


def test_a_worker_token_acts_only_as_the_worker_it_names_on_the_worker_protocol(client, tokens):
    worker = as_user(client, tokens, "gpu-a")
    assert worker.post("/api/agent/heartbeat", json={"worker_id": "gpu-a"}).json()["ok"] is True
    for path in ("/api/agent/heartbeat", "/api/agent/next-job"):
        refused = worker.post(path, json={"worker_id": IDLE_HOST})
        assert refused.status == 403 and refused.json()["worker_id"] == IDLE_HOST, refused.text
    refused = worker.post("/api/agent/job-status", json={"worker_id": IDLE_HOST, "job_id": "j1", "status": "failed"})
    assert refused.status == 403
    # Without a worker_id the token's own name is the worker: known, but holding no such attempt.
    assert worker.post("/api/agent/job-status", json={"job_id": "j1", "status": "failed"}).status == 409
    missing_role = as_user(client, tokens, "alice").post("/api/agent/heartbeat", json={"worker_id": "alice"})
    assert missing_role.status == 403 and missing_role.json()["role"] == "worker"
    assert client.post("/api/agent/next-job", json={"worker_id": "gpu-a"}).status == 401
    assert as_user(client, tokens, "api_token").post("/api/agent/next-job", json={"worker_id": IDLE_HOST}).status == 204


# ----- the audit log -----------------------------------------------------------------------------------


def test_every_change_is_audited_with_who_what_which_job_where_and_the_outcome_and_reads_are_not(served, tokens):
    server, _ = served()
    with ThreadedServer(server.app) as http:
        alice, bob = as_user(http, tokens, "alice"), as_user(http, tokens, "bob")
        job_id = submit(alice)["job_id"]
        bob.post(f"/stop/{job_id}")
        http.post(f"/stop/{job_id}")
        alice.get("/jobs")
        alice.delete(f"/job/{job_id}", headers={"X-Forwarded-For": "203.0.113.9"})
    lines = audit_lines(server.settings.shared_root)
    assert [(line["user"], line["method"], line["route"], line["status"]) for line in lines] == [
        ("alice", "POST", "/run-simulation", 200),
        ("bob", "POST", "/stop/<job_id>", 403),
        (None, "POST", "/stop/<job_id>", 401),
        ("alice", "DELETE", "/job/<job_id>", 200),
    ]
    assert all(line["job_id"] == job_id and line["remote"] == "127.0.0.1" for line in lines)  # not the forged one
    assert lines[1]["path"] == f"/stop/{job_id}" and dt.datetime.fromisoformat(lines[0]["at"].replace("Z", "+00:00"))


def test_an_unwritable_audit_log_never_fails_the_change(served, tokens, caplog):
    server, client = served()
    with open(os.path.join(server.settings.shared_root, "audit"), "w") as handle:  # a file where its folder goes
        handle.write("in the way")
    assert submit(as_user(client, tokens, "alice"))["submitted_by"] == "alice"
    assert "cannot append to the audit log" in caplog.text


# ----- the dashboard, with reads closed -------------------------------------------------------------


def test_the_dashboard_reads_with_the_token_and_its_event_stream_and_downloads_use_the_read_only_cookie(
        serving, tokens, browser):
    _, _, http = serving(tokens_file=tokens[0], embedded_worker=False)
    alice = as_user(http, tokens, "alice")
    job_id = submit(alice)["job_id"]
    browser.get(http.base_url + "/ui/app.css")  # the dashboard's origin: its sessionStorage
    browser.execute_script("sessionStorage.setItem('opeva.token', arguments[0])", tokens[1]["alice"])
    browser.get(http.base_url + "/ui/")
    wait_for(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#jobs tbody tr[data-job-id]')].map(row => row.dataset.jobId)")
        == [job_id], 20, message="the job listed with the token")
    wait_for(lambda: browser.execute_script("return document.body.dataset.live") == "events", 20,
             message="the event stream connected through the cookie")
    # What a download link does: a plain GET carrying no header, only the cookie.
    status = browser.execute_async_script("const done = arguments[arguments.length - 1];"
                                          "fetch(arguments[0]).then(r => done(r.status));", f"../logs/{job_id}")
    assert status in (200, 404)  # the log of a job not started yet: 404 from the route, not 401
    refused = browser.execute_async_script("const done = arguments[arguments.length - 1];"
                                           "fetch(arguments[0], {method: 'POST'}).then(r => done(r.status));",
                                           f"../stop/{job_id}")
    assert refused == 401  # the cookie never authorises a change
    browser.execute_script("sessionStorage.clear(); document.cookie = 'opeva_token=; path=/; max-age=0'")
    browser.get(http.base_url + "/ui/")
    wait_for(lambda: "401" in browser.execute_script("return document.querySelector('#message')?.textContent || ''"),
             20, message="the 401 shown without a token")


def test_a_caller_without_a_user_owns_nothing_unless_auth_is_off():
    for nobody in (auth.OPEN_READER, auth.NOBODY):
        with pytest.raises(Forbidden):
            nobody.check_owner("alice", "job j1")
        with pytest.raises(Forbidden):
            nobody.check_worker("gpu-a")
    auth.ANONYMOUS.check_owner("alice", "job j1")  # auth off: everybody may do everything
    auth.ANONYMOUS.check_worker("gpu-a")


def test_the_dashboard_names_the_tokens_user_and_hides_what_its_roles_do_not_allow(serving, tokens, browser):
    _, _, http = serving(tokens_file=tokens[0], embedded_worker=False)
    job_id = submit(as_user(http, tokens, "alice"))["job_id"]

    def shown_as(user, path, css):
        """Whether ``css`` shows on the dashboard page ``path`` for ``user``'s token, once it says who that is."""
        browser.get(http.base_url + "/ui/app.css")  # the dashboard's origin: its sessionStorage
        browser.execute_script("sessionStorage.setItem('opeva.token', arguments[0])", tokens[1][user])
        browser.get(http.base_url + path)
        wait_for(lambda: browser.execute_script("return document.querySelector('#whoami')?.textContent") == user,
                 20, message=f"the nav naming {user}")
        wait_for(lambda: browser.execute_script("return !!document.querySelector(arguments[0])", css), 20,
                 message=f"{css} drawn")  # a table's buttons come with its rows, maybe after the nav
        return browser.execute_script("return getComputedStyle(document.querySelector(arguments[0])).display"
                                      " !== 'none'", css)

    assert http.get("/whoami", headers=bearer(tokens[1]["reader"])).json() == {
        "user": "reader", "roles": ["read"], "auth": True}
    assert not shown_as("reader", f"/ui/job?id={job_id}", "#stop")
    assert not shown_as("reader", "/ui/", "#show-submit")
    assert shown_as("alice", f"/ui/job?id={job_id}", "#stop")
    assert shown_as("alice", "/ui/", "#show-submit")
    assert not shown_as("alice", "/ui/hosts", "button[data-needs=admin]")  # drawn, but hidden
    assert shown_as("root", "/ui/hosts", "button[data-needs=admin]")
    browser.execute_script("sessionStorage.clear(); document.cookie = 'opeva_token=; path=/; max-age=0'")
