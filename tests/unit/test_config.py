"""Configuration: layering (defaults < file < env < flags) and errors that name the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from b2bua.config import ConfigError, load_settings, parse_next_hop
from b2bua.sip.address import Address


def test_defaults_run_without_any_file():
    s = load_settings(environ={})
    assert s.sip.listen == ["127.0.0.1:5060"]
    assert parse_next_hop(s.routing.next_hop) == Address("udp", "127.0.0.1", 5080)


def test_file_env_and_flags_layer_in_order(tmp_path):
    f = tmp_path / "b2bua.toml"
    f.write_text('[calls]\nno_answer_timeout_s = 10\nmax_calls = 5\n[routing]\nnext_hop = "127.0.0.1:6000"\n')
    s = load_settings(str(f), environ={"B2BUA_CALLS__NO_ANSWER_TIMEOUT_S": "20"},
                      overrides={"routing": {"next_hop": "127.0.0.1:7000;transport=tcp"}})
    assert s.calls.no_answer_timeout_s == 20 and s.calls.max_calls == 5
    assert parse_next_hop(s.routing.next_hop) == Address("tcp", "127.0.0.1", 7000)


def test_yaml_and_list_env(tmp_path):
    f = tmp_path / "b2bua.yaml"
    f.write_text("routing:\n  rules:\n    - user_prefix: '9'\n      next_hop: 127.0.0.1:5090\n")
    s = load_settings(str(f), environ={"B2BUA_SIP__LISTEN": "127.0.0.1:5062, [::1]:5062"})
    assert s.sip.listen == ["127.0.0.1:5062", "[::1]:5062"]
    assert s.routing.rules[0].user_prefix == "9"


@pytest.mark.parametrize("env, field", [
    ({"B2BUA_CALLS__NO_ANSWER_TIMEOUT_S": "-1"}, "calls.no_answer_timeout_s"),
    ({"B2BUA_SIP__LISTEN": "127.0.0.1:99999"}, "sip.listen"),
    ({"B2BUA_ROUTING__NEXT_HOP": "127.0.0.1:5080;transport=sctp"}, "routing.next_hop"),
    ({"B2BUA_SIP__T1_MS": "fast"}, "sip.t1_ms"),
    ({"B2BUA_SIP__NOPE": "1"}, "sip.nope"),
])
def test_errors_name_the_field(env, field):
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    assert field in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text("[calls]\nno_answer_timeot_s = 3\n")
    with pytest.raises(ConfigError, match="calls.no_answer_timeot_s"):
        load_settings(str(f), environ={})


def test_cli_exits_2_naming_the_field_before_binding():
    proc = subprocess.run([sys.executable, "-m", "b2bua", "--next-hop", "127.0.0.1:0x50"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "routing.next_hop" in proc.stderr


def test_a_routes_transfer_mode_is_checked_and_named(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text('[[routing.rules]]\nuser_prefix = "9"\nnext_hop = "127.0.0.1:5090"\ntransfer_mode = "passthru"\n')
    with pytest.raises(ConfigError, match=r"routing\.rules\.0\.transfer_mode"):
        load_settings(str(f), environ={})
    f.write_text('[[routing.rules]]\nuser_prefix = "9"\nnext_hop = "127.0.0.1:5090"\ntransfer_mode = "passthrough"\n')
    assert load_settings(str(f), environ={}).routing.rules[0].transfer_mode == "passthrough"
