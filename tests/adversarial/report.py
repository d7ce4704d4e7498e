"""Regenerates docs/robustness.md from a run of the adversarial suite.

    tests/with-keyring.sh .venv/bin/python -m tests.adversarial.report

(plain ``.venv/bin/python -m tests.adversarial.report`` works too: the suite needs no keyring). Run it as root:
the tests marked ``needs_root`` (another uid at the socket) guard some defences, and skip otherwise. It runs
``tests/adversarial`` with this module as a pytest plugin, which records every test's outcome and
docstring, then checks that the suite notices when a defence is removed: for each entry of ``MUTANTS``
it copies the package to a temporary directory, disables one defence by a textual edit, runs the tests
that guard it against the copy, and expects them to fail. The working tree is never modified, so this is
safe while others edit the code. ``--no-mutants`` skips that part and keeps the previous mutant table;
``--only TEXT`` runs just the mutants whose defence names TEXT and prints their outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "robustness.md"
OUT_ENV = "CONVOCATIONS_ROBUSTNESS_JSON"
# The last section of DOC, from this heading on, is tests/mutation's (make mutation): kept as it is.
MUTATION_RUN = "## Mutation run"

DOORS = {
    "test_web_attacks": "Web pages attacking localhost",
    "test_local_users": "Other local users",
    "test_planted_code": "Code planted where a program starts",
    "test_bad_input": "Bad input on every door",
    "test_key_storage": "Storing the key when things go wrong",
    "test_upstream_faults": "Upstream faults",
    "test_crashes": "Crashes and restarts",
    "test_no_leaks": "Secrets never leak",
    "test_terminal": "Terminal hygiene",
}


class Mutant(NamedTuple):
    defence: str
    file: str  # under convocationsd/
    old: str  # replaced everywhere in file, and found there exactly `times` times: else it is stale
    new: str
    tests: list[str]  # at least one must fail
    times: int = 1


class Stale(Exception):
    """A mutant whose text is no longer in its file as often as it expects: MUTANTS needs updating."""


def apply(text: str, mutant: Mutant) -> str:
    """``text`` (the file's source) with the defence removed; raises Stale when ``old`` does not occur in it
    exactly ``times`` times (gone, or now also somewhere the mutant did not mean to change)."""
    found = text.count(mutant.old)
    if found != mutant.times:
        raise Stale(f"{mutant.old!r} is in {mutant.file} {found} times, not {mutant.times}: update MUTANTS")
    return text.replace(mutant.old, mutant.new)


# (defence, file, original text, replacement, tests that must fail[, times]): made Mutants at the end of the list
MUTANTS: list = [
    (
        "Host allow-list (DNS rebinding)",
        "daemon/http_app.py",
        'if request.headers.get("Host", "").lower() not in hosts:',
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_dns_rebinding_host_is_refused_without_side_effect"],
    ),
    (
        "Absolute-form target's authority checked",
        "daemon/http_app.py",
        'return absolute.scheme.lower() == "http" and absolute.netloc.lower() in hosts',
        "return True",
        ["tests/adversarial/test_web_attacks.py::test_absolute_form_target_must_name_us_too"],
    ),
    (
        "HTTP versions other than 1.0 and 1.1 get 505 as HTTP/1.1",
        "daemon/http_app.py",
        "if request.version not in (HttpVersion10, HttpVersion11):",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_request_line_with_another_version_gets_505_as_http11"],
    ),
    (
        "Cross-site check on the start routes",
        "daemon/http_app.py",
        "    if not _same_site(request, ctl.endpoint.port):\n",  # GET and POST; the buttons' have a comment
        "    if False:\n",
        ["tests/adversarial/test_web_attacks.py::test_cross_site_start_is_refused"],
        2,
    ),
    (
        "Callbacks only as top-level navigations",
        "daemon/http_app.py",
        "if not _navigation(request):",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_subresource_callback_is_refused"],
    ),
    (
        "state compare",
        "core/flows.py",
        "if state is not None and not hmac.compare_digest(",
        "if False and not hmac.compare_digest(",
        ["tests/adversarial/test_web_attacks.py::test_wrong_state_neither_exchanges_nor_ends_the_flow"],
    ),
    (
        "A stateless ?error= ends nothing by itself",
        "daemon/controller.py",
        'if state is None:\n            strays.warning("an error report without state',
        'if False:\n            strays.warning("an error report without state',
        ["tests/adversarial/test_web_attacks.py::test_stateless_error_does_not_end_the_login"],
    ),
    (
        "The end-the-login button only from our own page",
        "daemon/http_app.py",
        "if not _same_site(request, ctl.endpoint.port):  # only its own page may press the button",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_end_button_works_same_origin_only"],
    ),
    (
        "Callback error codes told in our words",
        "core/flows.py",
        "return OAUTH_ERRORS.get(error, REPORTED)",
        'return FlowError("exchange_failed", f"OpenRouter did not authorize the login ({error[:64]}).", "")',
        ["tests/adversarial/test_web_attacks.py::test_no_text_from_a_callback_reaches_convctl"],
    ),
    (
        "Codes without state unused by default",
        "core/flows.py",
        "if self.require_state:",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_stateless_code_is_refused_by_default"],
    ),
    (
        "Stateless codes never hold the login (exchanged on the side)",
        "core/flows.py",
        "        _refuse_if_exchanging(flow)\n        flow.confirmed.add(digest)",
        '        flow.confirmed.add(digest)\n        return self._claim(flow, "confirmed-" + token)',
        ["tests/adversarial/test_web_attacks.py::test_right_state_goes_first_while_a_stateless_code_is_exchanged"],
    ),
    (
        "A stateless code that fails upstream leaves the login",
        "daemon/controller.py",
        'return Outcome(OutcomeKind.IGNORED, "This link was ignored", message, e.flow_error.hint, e.flow_error.code)',
        "self._end(flow, e.flow_error); return _failed_outcome(e.flow_error)",
        ["tests/adversarial/test_web_attacks.py::test_stateless_code_that_fails_upstream_never_ends_the_login"],
    ),
    (
        "Paste logins ignore callbacks",
        "core/flows.py",
        "if flow.paste:",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_paste_login_ignores_browser_callbacks"],
    ),
    (
        "Stray result pages kept apart from the login's",
        "daemon/http_app.py",
        "kept = self._login if outcome.kind in (OutcomeKind.SUCCESS, OutcomeKind.FAILED) else self._stray",
        "kept = self._login",
        ["tests/adversarial/test_web_attacks.py::test_stray_flood_keeps_the_real_result_page"],
    ),
    (
        "Codes exchanged at most once",
        "core/flows.py",
        "if digest in self._used_codes:",
        "if False:",
        ["tests/adversarial/test_web_attacks.py::test_repeated_code_is_not_exchanged_again"],
    ),
    (
        "Peer uid check on the socket",
        "daemon/ipc_server.py",
        "if self.uid != self.server.uid:",
        "if False:",
        ["tests/integration/test_daemon_lifecycle.py::test_other_uid_client_is_refused"],
    ),
    (
        "Loopback HTTP only for our own uid",
        "daemon/http_app.py",
        "    elif not _same_user(request):",
        "    elif False:",
        ["tests/adversarial/test_local_users.py::test_other_uid_cannot_start_or_join_a_login_over_http"],
    ),
    (
        "Closed connections name no user (sock_diag)",
        "common/proc_net.py",
        "if reply[DIAG_STATE_OFFSET] != TCP_ESTABLISHED or not inode:",
        "if False:",
        [
            "tests/adversarial/test_local_users.py::test_a_closed_connection_names_no_user",
            "tests/adversarial/test_local_users.py::test_other_uid_that_closes_at_once_cannot_restart_a_login",
        ],
    ),
    (
        "Closed connections name no user (/proc/net fallback)",
        "common/proc_net.py",
        "return entry.uid if entry.state == ESTABLISHED and entry.inode else None",
        "return entry.uid",
        ["tests/adversarial/test_local_users.py::test_a_closed_connection_names_no_user"],
    ),
    (
        "Subscriber queue limit",
        "daemon/ipc_server.py",
        "if self.backlog > self.server.queue_limit and self.measure() > self.server.queue_limit:",
        "if False:",
        ["tests/integration/test_daemon_lifecycle.py::test_slow_subscriber_dropped_fast_one_gets_everything"],
    ),
    (
        "1 MiB line limit",
        "daemon/ipc_server.py",
        "protocol.MAX_LINE",
        "(1 << 62)",
        ["tests/adversarial/test_bad_input.py::test_line_over_one_mib_closes_that_connection_only"],
        4,  # the one-line fast path, a partial line, each whole line, what is left
    ),
    (
        "Bound on the bytes waiting for all socket clients together",
        "daemon/ipc_server.py",
        "if shed and grew and self.backlog > self.total_limit:",
        "if False:",
        [
            "tests/adversarial/test_bad_input.py::test_subscribers_that_stop_reading_cannot_take_the_daemons_memory",
            "tests/unit/test_ipc_server.py::test_stuck_subscribers_share_the_event_lines_and_the_furthest_behind_go_first",
        ],
    ),
    (
        "Stuck clients' queues share the event lines (no copy per client)",
        "daemon/ipc_server.py",
        "        if self.behind:\n            self.queue.append(line)",
        "        if False:\n            self.queue.append(line)",
        ["tests/adversarial/test_bad_input.py::test_subscribers_that_stop_reading_cannot_take_the_daemons_memory"],
    ),
    (
        "Numbers beyond a double (1e999) are a parse error",
        "core/protocol.py",
        "json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)",
        "json.JSONDecoder(parse_constant=_reject_constant)",
        ["tests/adversarial/test_bad_input.py::test_numbers_beyond_json_get_a_json_reply"],
    ),
    (
        "No NaN or Infinity is ever encoded (allow_nan=False)",
        "core/protocol.py",
        "allow_nan=False)",
        "allow_nan=True)",
        [
            "tests/unit/test_protocol.py::test_no_line_is_ever_written_with_nan_or_infinity",
            "tests/unit/test_ipc_server.py::test_a_result_that_is_not_json_gets_an_internal_error",
        ],
        2,  # both encoders, UTF-8 and ASCII
    ),
    (
        "Open-file limit raised at start",
        "daemon/main.py",
        "    raise_open_file_limit()\n",
        "",
        ["tests/adversarial/test_bad_input.py::test_two_thousand_idle_connections"],
    ),
    (
        "HTTP idle timeout (slowloris)",
        "daemon/http_sockets.py",
        "            keepalive_timeout=http_app.IDLE_TIMEOUT,\n",
        "",
        ["tests/adversarial/test_bad_input.py::test_slowloris_http_connections_are_closed"],
    ),
    (
        "Malformed HTTP requests logged without traceback",
        "daemon/http_app.py",
        "server_log.addFilter(_MALFORMED)",
        "pass",
        ["tests/adversarial/test_bad_input.py::test_oversized_header_is_4xx"],
    ),
    (
        "0700 runtime dir",
        "common/trust.py",
        "os.makedirs(directory, mode=0o700, exist_ok=True)",
        "os.umask(0o022); os.makedirs(directory, mode=0o755, exist_ok=True)",
        ["tests/adversarial/test_local_users.py::test_other_uid_cannot_traverse_default_runtime_dir"],
    ),
    (
        "Socket directory writable by others refused",
        "common/trust.py",
        "    if mode & 0o002:\n",
        "    if False:\n",
        ["tests/adversarial/test_local_users.py::test_socket_dir_others_can_write_is_refused_not_chmodded"],
    ),
    (
        "Socket directory that is a symbolic link refused",
        "common/paths.py",
        "if st is not None and stat.S_ISLNK(st.st_mode):",
        "if False:",
        ["tests/adversarial/test_local_users.py::test_symlinked_runtime_dir_is_refused"],
    ),
    (
        "Socket directory of another user refused",
        "common/trust.py",
        "    if not (trusted_uid(st.st_uid) or _unmapped_outside(st.st_uid)):\n",
        "    if False:\n",
        ["tests/adversarial/test_local_users.py::test_runtime_dir_owned_by_another_user_is_refused"],
    ),
    (
        "No chmod of a directory the daemon did not create",
        "common/trust.py",
        "    finally:\n        os.umask(old_umask)\n",
        "    finally:\n        os.umask(old_umask)\n    os.chmod(directory, 0o700)\n",
        ["tests/adversarial/test_local_users.py::test_shared_sticky_dir_is_used_and_left_alone"],
    ),
    (
        "platformdirs' refusal of the runtime dir is a clear error",
        "common/paths.py",
        "except OSError as e:  # newer releases",
        "except ImportError as e:  # newer releases",
        [
            "tests/adversarial/test_local_users.py::test_default_runtime_dir_planted_by_another_user_without_xdg_runtime_dir"
        ],
    ),
    (
        "Another user's stale socket is not removed",
        "daemon/ipc_server.py",
        "if st.st_uid != os.getuid():",
        "if False:",
        ["tests/adversarial/test_local_users.py::test_stale_socket_of_another_user_is_not_removed"],
    ),
    (
        "Clients check the socket directory",
        "client.py",
        "        check_socket_dir(self.path.parent)\n        sock = socket.socket",
        "        sock = socket.socket",
        ["tests/adversarial/test_local_users.py::test_socket_dir_others_can_write_is_refused_not_chmodded"],
    ),
    (
        "Clients check the server's uid",
        "client.py",
        "if not trusted_uid(uid):",
        "if False:",
        ["tests/adversarial/test_local_users.py::test_clients_refuse_a_server_run_by_another_user"],
    ),
    (
        "convctl prints foreign text inert",
        "cli/main.py",
        "safe_line(str(line))",
        "str(line)",
        [
            "tests/adversarial/test_terminal.py::test_convctl_output_from_the_daemon_is_inert",
            "tests/adversarial/test_terminal.py::test_doctor_shows_a_hostile_process_name_inert",
        ],
    ),
    (
        "convctl --json escapes what json.dumps leaves raw",
        "cli/main.py",
        "self.stdout.write(safe_json(data) + ",
        "self.stdout.write(__import__('json').dumps(data, ensure_ascii=False) + ",
        ["tests/adversarial/test_terminal.py::test_json_output_stays_exact_and_inert"],
    ),
    (
        "Only a plain http(s) URL goes to the browser",
        "cli/commands.py",
        "if not browser_safe(url):",
        "if False:",
        ["tests/adversarial/test_terminal.py::test_browser_gets_only_a_plain_http_url"],
    ),
    (
        "service status prints systemctl's output inert",
        "cli/service_install.py",
        "print(safe_line(line), file=self.out, flush=True)",
        "print(line, file=self.out, flush=True)",
        ["tests/adversarial/test_terminal.py::test_service_status_shows_systemctl_output_inert"],
    ),
    (
        "Loose secret.key refused",
        "store/encrypted.py",
        "if st.st_mode & 0o077:",
        "if False:",
        ["tests/adversarial/test_local_users.py::test_loose_secret_key_refused_when_storing_from_a_login"],
    ),
    (
        "Key checks never follow a redirect (convctl)",
        "cli/secret_ops.py",
        "urllib.request.build_opener(NoRedirects)",
        "urllib.request.build_opener()",
        ["tests/adversarial/test_no_leaks.py::test_a_key_being_checked_never_follows_a_redirect"],
    ),
    (
        "Key checks never follow a redirect (daemon)",
        "daemon/openrouter.py",
        "allow_redirects=False",
        "allow_redirects=True",
        ["tests/adversarial/test_no_leaks.py::test_a_key_being_checked_never_follows_a_redirect"],
    ),
    (
        "The key is not printed to a terminal",
        "cli/commands.py",
        "if out.stdout.isatty() and not args.show:",
        "if False:",
        ["tests/integration/test_key_commands.py::test_get_key_prints_it_for_scripts_but_not_on_a_terminal"],
    ),
    (
        "No key in logs (a leak planted on purpose)",
        "daemon/controller.py",
        "backend = await self._store_key(key)",
        'log.info("storing %s", key); backend = await self._store_key(key)',
        ["tests/adversarial/test_no_leaks.py::test_no_secret_in_any_output"],
        2,  # a login's key and one given to secret.set
    ),
    (
        "Key never on the secret-store helper's command line",
        "store/helper.py",
        '                        self.forced_backend or "",\n',
        '                        self.forced_backend or "",\n                        line.decode(),\n',
        ["tests/integration/test_secret_helper.py::test_the_key_travels_only_through_the_pipe"],
    ),
]


PLANTED = "tests/adversarial/test_planted_code.py::test_code_planted_in_the_working_directory_never_runs"
MUTANTS += [
    (
        "The secret-store helper imports nothing from the working directory (-P)",
        "common/interpreter.py",
        'return [python, SAFE_PATH, "-m", module]',
        'return [python, "-m", module] if module.endswith("helper") else [python, SAFE_PATH, "-m", module]',
        [PLANTED + "[entry-point-script]"],
    ),
    (
        "The systemd unit and launchd agent import nothing from the working directory (-P)",
        "cli/service_install.py",
        'return module_command(python, "convocationsd")',
        'return [python, "-m", "convocationsd"]',
        [PLANTED + "[systemd-unit]", PLANTED + "[launchd-agent]"],
    ),
    (
        "-P, not -I, keeps a pip install --user installation",
        "common/interpreter.py",
        'SAFE_PATH = "-P"',
        'SAFE_PATH = "-I"',
        ["tests/adversarial/test_planted_code.py::test_the_command_line_keeps_a_user_installation"],
    ),
]


KEY_STORAGE = "tests/adversarial/test_key_storage.py::"
MUTANTS += [
    (
        "The secret-store helper refuses an operation it does not know",
        "store/helper.py",
        "        return Op(name)\n",
        '        return Op(name) if name in ("set", "get") else Op.CLEAR\n',  # anything else taken for clear
        [KEY_STORAGE + "test_helper_refuses_an_operation_it_does_not_know"],
    ),
    (
        "A helper that did not answer is ended before the next call",
        "store/helper.py",
        "            if not answer:  # also when something above raised\n",
        "            if not answer and not sys.exc_info()[0]:\n",
        [KEY_STORAGE + "test_a_helper_call_that_fails_is_not_answered_by_the_next_one"],
    ),
    (
        "The helper's answer is awaited without select() (descriptors past 1023)",
        "store/helper.py",
        "    with selectors.DefaultSelector() as waiting:\n        waiting.register(stream, selectors.EVENT_READ)\n"
        "        if not waiting.select(timeout):\n",
        '    if True:\n        if not __import__("select").select([stream], [], [], timeout)[0]:\n',
        [KEY_STORAGE + "test_a_daemon_past_1024_descriptors_links_and_hands_out_the_key"],
    ),
    (
        "The blocking client waits without select() (descriptors past 1023)",
        "client.py",
        "            self._sock.settimeout(remaining)\n",
        '            __import__("select").select([self._sock], [], [], remaining)\n',
        [KEY_STORAGE + "test_a_daemon_past_1024_descriptors_links_and_hands_out_the_key"],
    ),
    (
        "convctl waits for a pasted code without select() (descriptors past 1023)",
        "cli/commands.py",
        "        return bool(waiting.select(timeout))",
        '        return bool(__import__("select").select([fd], [], [], timeout)[0])',
        [KEY_STORAGE + "test_convctl_waits_for_a_pasted_code_on_a_descriptor_past_1023"],
    ),
    (
        "Only the project's own keyring item is read, written or deleted",
        "store/configured.py",
        'if backend == KEYRING and (ref["service"], ref["username"]) != (SERVICE, USERNAME):',
        "if False:",
        [KEY_STORAGE + "test_a_key_reference_cannot_name_another_keyring_item"],
    ),
    (
        "A key that could not be stored is held in memory",
        "daemon/controller.py",
        "            self.unsaved = UnsavedKey(key, flow.session_id, self.clock(), why, replaced)\n",
        "",
        [KEY_STORAGE + "test_a_key_that_could_not_be_stored_is_held_in_memory_until_it_is"],
    ),
    (
        "The next read of the key stores the one held in memory",
        "daemon/controller.py",
        "                await self._store_unsaved()\n",
        "                pass\n",
        [KEY_STORAGE + "test_a_key_that_could_not_be_stored_is_held_in_memory_until_it_is"],
    ),
    (
        "A held key replaced by a newer one that could not be stored either is named, never dropped silently",
        "daemon/controller.py",
        "if previous is not None:  # never silently",
        "if False:  # never silently",  # the comment goes on after "silently": cut there, it would not compile
        [KEY_STORAGE + "test_a_second_key_that_cannot_be_stored_replaces_the_first_and_says_so"],
    ),
]


WEB = "tests/adversarial/test_web_attacks.py::"
MUTANTS += [
    (
        "A code without state waits for the person's confirmation",
        "daemon/controller.py",
        "                return _confirmation(code, self.flows.confirmation_token(code))",
        "                flow = self.flows.take_confirmed_code(code, self.flows.confirmation_token(code))\n"
        "                return await self._exchange_on_the_side(flow, code)",
        [WEB + "test_a_code_made_without_a_challenge_is_not_used_without_the_person"],
    ),
    (
        "The Finish-linking button only from our own page",
        "daemon/http_app.py",
        "if not _same_site(request, ctl.endpoint.port):  # only its own page may press the button",
        "if False:",
        [WEB + "test_a_code_made_without_a_challenge_is_not_used_without_the_person"],
    ),
    (
        "Finish linking posts its code with a MAC of it under the login's key, checked",
        "core/flows.py",
        'or not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), _confirmation_mac(flow, code).encode())',
        "or False",
        [
            "tests/unit/test_flows.py::test_a_confirmation_token_fits_its_code_and_its_flow_only_and_no_flood_pushes_it_out",
            WEB + "test_a_code_made_without_a_challenge_is_not_used_without_the_person",
        ],
    ),
    (
        "Nothing is held for a Finish linking page (as if only the latest code waited)",
        "core/flows.py",
        "        self._remember(code)\n        return _confirmation_mac(flow, code)",
        "        self._remember(code)\n        flow.confirm_key = self._token(32)\n        return _confirmation_mac(flow, code)",
        [WEB + "test_no_flood_of_codes_pushes_the_persons_finish_linking_out"],
    ),
    (
        "A GET of the start route never ends a pending login",
        "daemon/http_app.py",
        "    reply = ctl.start()\n    raise web.HTTPFound",
        '    reply = ctl.start(restart=request.query.get("restart") == "1")\n    raise web.HTTPFound',
        [WEB + "test_a_link_opened_from_another_app_cannot_end_the_pending_login"],
    ),
    (
        "Never store a key from a login that has ended",
        "core/flows.py",
        "if self.pending is not flow or flow.status != FlowStatus.PENDING:",
        "if False:",
        [WEB + "test_a_key_from_a_login_that_has_ended_is_never_stored"],
    ),
]


LOCAL = "tests/adversarial/test_local_users.py::"
MUTANTS += [
    (
        "Refused requests logged once per kind per interval, with a count",
        "daemon/logs.py",
        "        if held is not None:\n            held.add(record)\n",
        "        if False:\n            held.add(record)\n",
        ["tests/adversarial/test_bad_input.py::test_a_flood_of_refused_requests_is_logged_once_per_kind_with_a_count"],
    ),
    (
        "Stray callbacks a web page sends logged once per kind per interval, with a count",
        "daemon/controller.py",
        "strays.addFilter(REFUSALS)",
        "pass",
        [WEB + "test_a_flood_of_stray_callbacks_is_logged_once_per_kind_with_a_count"],
    ),
    (
        "Repeated refusals counted per source (uid), each named",
        "daemon/logs.py",
        "        variant = record.getMessage()\n",
        "        variant = self.first.getMessage()\n",
        [
            "tests/unit/test_logs.py::test_repeats_name_every_source_not_only_the_first",
            LOCAL + "test_refusals_from_two_uids_name_both",
        ],
    ),
    (
        "A config.toml (or directory) others can write stops the daemon",
        "common/trust.py",
        "    if mode & 0o002:\n",
        "    if False:\n",
        [LOCAL + "test_config_that_others_can_write_stops_the_daemon"],
    ),
    (
        "The config directory's missing parents are made 0700 under any umask",
        "common/trust.py",
        "    old_umask = os.umask(0o077)\n    try:\n        os.makedirs(directory, mode=0o700, exist_ok=True)",
        "    old_umask = os.umask(os.umask(0))\n    try:\n        os.makedirs(directory, mode=0o700, exist_ok=True)",
        [LOCAL + "test_modes_hold_under_umask_000"],
    ),
    (
        "A config.toml of another user stops the daemon",
        "common/trust.py",
        "    if not (trusted_uid(st.st_uid) or _unmapped_outside(st.st_uid)):\n",
        "    if False:\n",
        [LOCAL + "test_config_another_user_appended_to_or_owns_stops_the_daemon"],
    ),
    (
        "Group write on config.toml only for a group of one",
        "common/trust.py",
        "return primary <= {owner} and set(group.gr_mem) <= {name} and bool(primary or group.gr_mem)",
        "return True",
        [LOCAL + "test_config_another_user_appended_to_or_owns_stops_the_daemon"],
    ),
    (
        "The way to config.toml followed one link at a time (the folder of a middle link checked)",
        "common/trust.py",
        "target = os.readlink(entry)",
        "target = os.path.realpath(entry)",
        [LOCAL + "test_config_reached_through_a_link_in_a_folder_others_can_write_stops_the_daemon"],
    ),
    (
        "No group-of-one exception for a config.toml with a POSIX ACL",
        "common/trust.py",
        "        if _has_acl(entry):\n",
        "        if False:\n",
        [LOCAL + "test_config_with_a_posix_acl_is_not_let_through_as_a_group_of_one"],
    ),
    (
        "The overflow uid is taken as root's only inside a user namespace (outside it is nobody's)",
        "common/trust.py",
        "    return uid == overflow and not identity\n",
        "    return uid == overflow\n",
        [LOCAL + "test_config_another_user_appended_to_or_owns_stops_the_daemon"],
    ),
    (
        "doctor gives the fix of an untrusted config.toml (chmod/chown), not the syntax hint",
        "cli/doctor.py",
        'fix = ctx.config_untrusted or f"Fix the syntax',
        'fix = f"Fix the syntax',
        [LOCAL + "test_doctor_says_how_to_fix_a_config_others_can_write"],
    ),
    (
        "doctor's files check fails for a config.toml others can change",
        "cli/doctor.py",
        "if ctx.config_untrusted and ctx.config_error:",
        "if False:",
        [LOCAL + "test_doctor_says_how_to_fix_a_config_others_can_write"],
    ),
]

MUTANTS = [Mutant(*m) for m in MUTANTS]
# The ones that name store/configfile.py or common/paths.py follow their text (the trust walks), which moves
# often: tests/unit/test_mutant_lists.py says at once which no longer apply.


# -- the pytest plugin -----------------------------------------------------------------------------------

_docs: dict[str, str] = {}
_results: dict[str, dict] = {}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
        _docs[item.nodeid] = doc


def pytest_runtest_logreport(report) -> None:
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "duration": 0.0})
    entry["duration"] += report.duration
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"


def pytest_sessionfinish(session) -> None:
    out = os.environ.get(OUT_ENV)
    if out:
        data = {nid: {**r, "doc": _docs.get(nid, "")} for nid, r in _results.items()}
        Path(out).write_text(json.dumps(data, indent=1))


# -- the script ------------------------------------------------------------------------------------------


def run_suite() -> tuple[dict, float]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, OUT_ENV: out}
    t0 = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.adversarial.report",
            "tests/adversarial",
        ],
        cwd=ROOT,
        env=env,
    )
    elapsed = time.monotonic() - t0
    data = json.loads(Path(out).read_text())
    os.unlink(out)
    return data, elapsed


def run_mutant(mutant: Mutant) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="cvmut") as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "convocationsd", work / "convocationsd", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
        (work / "tests").symlink_to(ROOT / "tests")  # (the service templates are in the package, copied above)
        target = work / "convocationsd" / mutant.file
        try:
            target.write_text(apply(target.read_text(), mutant))
        except Stale as e:
            return "not applied", str(e)
        # cwd=work: this pytest and the daemons it starts (python -m convocationsd) import the mutant; so do the
        # processes that import nothing from their working directory (python -P, entry-point scripts), through
        # PYTHONPATH.
        path = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH", "")) if p)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": path},
        )
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        failed = [
            line.split(" - ")[0].replace("FAILED ", "")
            for line in done.stdout.splitlines()
            if line.startswith("FAILED")
        ]
        if done.returncode == 0:
            return "NOT DETECTED", summary
        return "detected", (failed[0].split("::", 1)[-1] + ": " if failed else "") + summary


def _first_para(doc: str) -> tuple[str, str]:
    """(case, defence) from a docstring: its first paragraph, and a 'Defence:' line if there is one."""
    text = " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())
    m = re.search(r"Defence:\s*(.+?)(?:\n\n|$)", doc.strip(), re.S)
    defence = " ".join(m.group(1).split()) if m else ""
    return text, defence


def render(
    results: dict, elapsed: float, mutants: list[tuple[Mutant, tuple[str, str]]] | None, old_mutant_section: str
) -> str:
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    lines = [
        "# Robustness: hostile input and faults",
        "",
        "Generated by `tests/adversarial/report.py` from a run of `tests/adversarial`; do not edit by hand.",
        "Regenerate with:",
        "",
        "    tests/with-keyring.sh .venv/bin/python -m tests.adversarial.report",
        "",
        "(`.venv/bin/python -m tests.adversarial.report --no-mutants` skips the defence checks and keeps the last table.)",
        "The threat model behind these cases is in [SECURITY.md](../SECURITY.md).",
        "",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(results)} cases, "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f", {elapsed:.0f} s.",
        "",
    ]
    by_door: dict[str, list[tuple[str, dict]]] = {}
    for nid, r in results.items():
        module = nid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        by_door.setdefault(module, []).append((nid, r))
    for module, door in DOORS.items():
        rows = by_door.get(module, [])
        if not rows:
            continue
        lines += [
            f"## {door}",
            "",
            f"`tests/adversarial/{module}.py`",
            "",
            "| case | variant | defence | result |",
            "|---|---|---|---|",
        ]
        grouped: dict[str, list[tuple[str, dict]]] = {}
        for nid, r in rows:
            grouped.setdefault(nid.split("::")[1].split("[")[0], []).append((nid, r))
        for items in grouped.values():
            case, defence = _first_para(items[0][1]["doc"])
            for nid, r in items:
                variant = nid.split("[", 1)[1].rstrip("]") if "[" in nid else ""
                result = {"passed": "pass", "failed": "**FAIL**", "error": "**ERROR**", "skipped": "skipped"}[
                    r["outcome"]
                ]
                lines.append(
                    f"| {case.replace('|', '/') if variant == '' or nid == items[0][0] else '〃'} | {variant} | "
                    f"{defence.replace('|', '/') if nid == items[0][0] else ''} | {result} |"
                )
        lines.append("")
    lines += ["## Does the suite notice a missing defence?", ""]
    if mutants is None:
        lines += [old_mutant_section.strip() or "(not run)", ""]
    else:
        lines += [
            "Each row disables one defence in a temporary copy of the package (the working tree is untouched),",
            "runs the tests that guard it against the copy, and expects them to fail.",
            "",
            "| defence disabled | file | tests run | outcome |",
            "|---|---|---|---|",
        ]
        for m, (verdict, detail) in mutants:
            names = ", ".join(t.split("::")[-1] for t in m.tests)
            lines.append(
                f"| {m.defence} | `convocationsd/{m.file}` | `{names}` | {verdict}: {detail.replace('|', '/')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-mutants", action="store_true", help="skip the defence checks; keep the last table")
    p.add_argument("--only", metavar="TEXT", help="run only the mutants whose defence contains TEXT; write nothing")
    args = p.parse_args(argv)
    if args.only:
        chosen = [m for m in MUTANTS if args.only.lower() in m.defence.lower()]
        outcomes = [(m.defence, run_mutant(m)) for m in chosen]
        for name, (verdict, detail) in outcomes:
            print(f"mutant {name}: {verdict} ({detail})")
        return 0 if outcomes and all(o[0] == "detected" for _, o in outcomes) else 1
    results, elapsed = run_suite()
    old, heading, mutation_run = (DOC.read_text() if DOC.exists() else "").partition(MUTATION_RUN)
    old_section = (
        old.split("## Does the suite notice a missing defence?", 1)[1] if "## Does the suite notice" in old else ""
    )
    mutants = None
    if not args.no_mutants:
        mutants = []
        for m in MUTANTS:
            outcome = run_mutant(m)
            print(f"mutant {m.defence}: {outcome[0]} ({outcome[1]})", flush=True)
            mutants.append((m, outcome))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(results, elapsed, mutants, old_section) + ("\n" + heading + mutation_run if heading else ""))
    print(f"wrote {DOC.relative_to(ROOT)}")
    failed = [n for n, r in results.items() if r["outcome"] in ("failed", "error")]
    missed = [m.defence for m, (verdict, _) in mutants or [] if verdict != "detected"]
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
