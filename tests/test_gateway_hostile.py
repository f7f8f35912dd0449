"""Tenant isolation and hostile clients, over real websocket connections on 127.0.0.1.

Every scenario runs next to a healthy session (tests/test_gateway.py's healthy_session) that must stream
and end with every event delivered in order, whatever the hostile client does. Per-address limits are
tried from other loopback addresses (127.0.0.2, ...) so that the healthy session's 127.0.0.1 is untouched.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import subprocess
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from actors.gateway import Gateway, GatewayConfig
from actors.gateway_auth import token_table
from magtkd_stream.wire import protocol as P
from magtkd_stream.config import ConfigError
from test_gateway import (
    TOKEN,
    TOKEN_B,
    ScriptedSink,
    collect,
    dial,
    expect_error,
    finish,
    healthy_session,
    hello,
    publisher,
    raw,
    recv_json,
    run,
    running,
    send_audio,
    subscriber,
    url,
)

ADMIN, ACME_PUB, ACME_READ = "tok-admin", "tok-acme-pub", "tok-acme-read"


def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        f"- {{token: {ADMIN}, tenant: ops, roles: [subscribe, admin]}}\n"
        f"- {{token: {ACME_PUB}, tenant: acme, roles: [publish]}}\n"
        f"- {{token: {ACME_READ}, tenant: acme, roles: [subscribe]}}\n",
        encoding="utf-8",
    )
    return str(path)


async def stream(gw: Gateway, session: str, token: str) -> dict:
    ws = await publisher(gw, session, token=token)
    await send_audio(ws, 0.1)
    return await finish(ws)


# ------------------------------------------------------------ 1. tenancy


def test_each_tenant_reads_only_its_own_sessions_and_admin_reads_all(tmp_path: Path) -> None:
    async def hostile(gw: Gateway, live: asyncio.Event) -> None:
        await live.wait()
        admin, w_admin = await subscriber(gw, "*", token=ADMIN)
        acme_star, w_acme = await subscriber(gw, "*", token=ACME_READ, resume={})
        assert w_acme["type"] == "welcome" and w_acme["sessions"] == {}  # "good" is TOKEN's tenant
        assert "good" in w_admin["sessions"]
        waiting, _ = await subscriber(gw, "later", token=TOKEN_B)  # not started yet: allowed to wait
        await stream(gw, "acme-1", ACME_PUB)
        await stream(gw, "later", TOKEN)  # opened by another tenant than the waiting subscriber's
        await expect_error(waiting, "forbidden", True, "another tenant")
        got_acme = await collect(acme_star, {"acme-1"})
        assert {e["session"] for e in got_acme} == {"acme-1"}
        # B's "*" with resume {} reads nothing of the other tenants' sessions (it used to read all of them)
        b_star, w_b = await subscriber(gw, "*", token=TOKEN_B, resume={})
        assert w_b["sessions"] == {}
        await b_star.send(json.dumps({"type": "ping", "id": 1}))
        assert (await recv_json(b_star))["type"] == "pong"  # no replayed event came before the pong
        await expect_error(await raw(gw, hello("subscriber", session="acme-1", token=TOKEN_B)), "forbidden", True,
                           "another tenant")
        await expect_error(await raw(gw, hello(session="x1", token=ACME_READ)), "forbidden", True, "may not publish")
        await expect_error(await raw(gw, hello("subscriber", session="*", token=ACME_PUB)), "forbidden", True,
                           "may not subscribe")
        everything = await collect(admin, {"acme-1", "later"})
        assert {e["session"] for e in everything} >= {"acme-1", "later"}
        for ws in (admin, acme_star, b_star):
            await ws.close()

    async def scenario() -> None:
        async with running(ScriptedSink(every=5, at_end=2, end_delay=0.05), tokens_file=tokens_file(tmp_path)) as gw:
            live = asyncio.Event()
            await asyncio.gather(healthy_session(gw, live), hostile(gw, live))
            admin, _ = await subscriber(gw, "*", token=ADMIN, resume={})  # admin replays every tenant's sessions
            replayed = await collect(admin, {"good", "acme-1", "later"})
            assert {e["session"] for e in replayed} == {"good", "acme-1", "later"}
            await admin.close()

    run(scenario(), timeout=40)


def test_token_config_entries_file_and_plain_tokens(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MAGTKD_TOKENS", "plain-env")
    cfg = GatewayConfig.from_mapping(
        {"tokens": ["plain", {"token": "t-ops", "tenant": "ops", "roles": ["admin"]}], "tokens_file": tokens_file(tmp_path)}
    )
    table = token_table(cfg)
    assert table.tokens == ("plain", "t-ops", ADMIN, ACME_PUB, ACME_READ, "plain-env")
    plain, env = table.lookup("plain"), table.lookup("plain-env")
    assert plain.tenant != env.tenant and "plain" not in plain.tenant  # each plain token its own tenant
    assert plain.roles == {"publish", "subscribe"} and table.lookup("t-ops").may("subscribe")
    assert table.lookup(ACME_READ).tenant == "acme" and not table.lookup(ACME_READ).may("publish")
    assert table.lookup("nope") is None and table.lookup("\udcff") is None
    with pytest.raises(ConfigError, match="roles"):
        GatewayConfig(tokens=({"token": "x", "roles": ["root"]},))
    with pytest.raises(ConfigError, match="tenant"):
        GatewayConfig(tokens=({"token": "x", "tenant": "has space"},))
    with pytest.raises(ConfigError, match="unknown key"):
        GatewayConfig(tokens=({"token": "x", "tennant": "a"},))
    with pytest.raises(ConfigError, match="cannot read"):
        token_table(GatewayConfig(tokens_file=str(tmp_path / "missing.yaml")))
    (tmp_path / "bad.yaml").write_text("token: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="list of token entries"):
        token_table(GatewayConfig(tokens_file=str(tmp_path / "bad.yaml")))
    with pytest.raises(ConfigError, match="twice"):
        token_table(GatewayConfig(tokens=({"token": "x", "tenant": "a"}, {"token": "x", "tenant": "b"})))


# ------------------------------------------------------------ 2. bad input


DEEP = "[" * 60_000  # under max_hello_bytes, so the nesting rule (not the size) answers
SURROGATE_TOKEN = '{"type":"hello","version":1,"token":"\\udcff","role":"subscriber","session":"*"}'
FIRST_MESSAGES = [  # (first message, error code, words in the message)
    (DEEP, "bad_message", "deeper than the limit of 8"),
    ('{"type":"hello","a":' * 9 + "1" + "}" * 9, "bad_message", "deeper than the limit of 8"),
    (SURROGATE_TOKEN, "bad_message", "'token' is not valid Unicode"),
    (hello(speaker="\udcff"), "bad_message", "'speaker' is not valid Unicode"),
    (hello(token="t" * 600), "bad_message", "'token' is 600 characters long; at most 512"),
    (hello(speaker="s" * 200), "bad_message", "'speaker' is 200 characters long; at most 128"),
    (hello(speaker="s" * 30_000), "bad_message", "limited to 1024 characters"),
    (hello("subscriber", session="*", resume={"s": -1}), "bad_message", "'resume.s' must be >= 0"),
    ('{"type":"ping","id":"\\ud800"}', "bad_message", "not valid Unicode"),
    ("[" * 100_000, "oversized", "max_hello_bytes 65536"),
]
AFTER_HELLO = [  # (message after the hello, words in the non-fatal bad_message)
    ("[" * 100_000, "deeper than the limit of 8"),
    ('{"type":"ping","id":"' + "i" * 900_000 + '"}', "limited to 1024 characters"),
    ('{"type":"ping","id":"' + "i" * 200 + '"}', "'id' is 200 characters long; at most 128"),
    ('{"type":"ping","id":' + "9" * 30 + "}", "<= 9007199254740991"),
    ('{"type":"ping","id":"\\udcff"}', "'id' is not valid Unicode"),
    ('{"type":"ping","\\udcff":1}', "not valid Unicode"),
]


def test_hostile_text_is_bad_input_never_internal_while_a_good_session_streams() -> None:
    async def hostile(gw: Gateway, sink: ScriptedSink) -> None:
        for first, code, words in FIRST_MESSAGES:
            await expect_error(await raw(gw, first), code, True, words)
        big = await raw(gw, hello(speaker="s" * 900_000))  # beyond the pre-hello hard cap: websockets closes
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(big.recv(), 5)
        assert big.close_code == 1009 and "limit of 131072 bytes" in big.close_reason
        pub = await publisher(gw, "bad")
        sub, _ = await subscriber(gw, "bad")
        for ws in (pub, sub):
            for text, words in AFTER_HELLO:
                await ws.send(text)
                await expect_error(ws, "bad_message", False, words)
            await ws.send(json.dumps({"type": "ping", "id": "still-here"}))
            assert await recv_json(ws) == {"type": "pong", "version": 1, "id": "still-here"}
        await send_audio(pub, 0.1)
        await finish(pub)
        events = await collect(sub, {"bad"})
        assert events[-1]["reason"] == "end" and sink.samples["bad"] == 1600
        await sub.close()

    async def scenario() -> None:
        sink = ScriptedSink(every=5, at_end=2, end_delay=0.05)
        async with running(sink) as gw:
            live = asyncio.Event()
            await asyncio.gather(healthy_session(gw, live), hostile(gw, sink))

    run(scenario(), timeout=60)


def test_a_server_failure_while_reading_a_publisher_is_answered_before_closing(monkeypatch) -> None:
    from actors.gateway_publisher import PublisherSession

    original = PublisherSession._on_text

    async def broken(self, raw_text: str) -> bool:
        if self.session == "bad":
            raise RuntimeError("bug")
        return await original(self, raw_text)

    monkeypatch.setattr(PublisherSession, "_on_text", broken)

    async def hostile(gw: Gateway) -> None:
        ws = await publisher(gw, "bad")
        await ws.send(json.dumps({"type": "ping"}))
        await expect_error(ws, "internal", True, "RuntimeError")
        assert gw.bus.state("bad") == "ended"

    async def scenario() -> None:
        async with running(ScriptedSink(every=5, at_end=2)) as gw:
            await asyncio.gather(healthy_session(gw, asyncio.Event()), hostile(gw))

    run(scenario())


# ------------------------------------------------------------ 3. limits


def refused(status: int, *words: str):
    """Assert that a connection attempt is refused at the HTTP handshake with this status and text."""

    async def check(attempt) -> None:
        with pytest.raises(InvalidStatus) as info:
            await attempt
        response = info.value.response
        assert response.status_code == status, response
        for word in words:
            assert word in response.body.decode(), (word, response.body)

    return check


def test_connection_caps_hello_size_and_welcome_limits_while_a_good_session_streams() -> None:
    async def hostile(gw: Gateway, sink: ScriptedSink, live: asyncio.Event) -> None:
        await live.wait()  # the healthy session holds its 2 connections from 127.0.0.1
        held = [await dial(gw, "127.0.0.2") for _ in range(3)]
        await refused(429, "max_connections_per_address 3")(dial(gw, "127.0.0.2"))
        held.append(await dial(gw, "127.0.0.3"))  # 2 + 4 = max_connections
        await refused(503, "max_connections 6")(dial(gw, "127.0.0.3"))
        for ws in held:
            await ws.close()
        for _ in range(100):
            if len(gw.guard.open) <= 2:
                break
            await asyncio.sleep(0.02)
        # room again; a first message over max_hello_bytes is oversized, then a big frame after welcome is fine
        await expect_error(await raw(gw, json.dumps({"type": "hello", "pad": "x" * 1500}), source="127.0.0.2"),
                           "oversized", True, "of 1528 bytes exceeds max_hello_bytes 1000")
        ws = await publisher(gw, "bad")
        await ws.send(P.encode_audio(np.zeros(30_000, np.int16)))  # 60 kB: more than the hello limit
        await finish(ws)
        assert sink.samples["bad"] == 30_000

    async def scenario() -> None:
        sink = ScriptedSink(every=5, at_end=2, end_delay=0.05)
        async with running(sink, max_connections=6, max_connections_per_address=3, max_hello_bytes=1000) as gw:
            live = asyncio.Event()
            await asyncio.gather(healthy_session(gw, live), hostile(gw, sink, live))
            _, welcome = await subscriber(gw, "*")
            limits = welcome["limits"]
            assert (limits["max_connections"], limits["max_connections_per_address"], limits["max_hello_bytes"]) == (
                6, 3, 1000)
            assert limits["hello_rate_per_address"] == 10 and limits["hello_burst_per_address"] == 30
            assert limits["max_json_depth"] == P.MAX_JSON_DEPTH and limits["max_string_chars"] == P.MAX_STRING_CHARS

    run(scenario(), timeout=40)


def test_limit_config_is_validated() -> None:
    for key in ("max_hello_bytes", "max_connections", "max_connections_per_address", "hello_rate_per_address",
                "hello_burst_per_address"):
        with pytest.raises(ConfigError, match=key):
            GatewayConfig.from_mapping({key: 0})
    with pytest.raises(ConfigError, match="tls_key"):
        GatewayConfig(tls_cert="cert.pem")
    with pytest.raises(ConfigError, match="allowed_origins"):
        GatewayConfig(allowed_origins=("https://app.example/path",))
    with pytest.raises(ConfigError, match="tls_cert"):
        GatewayConfig.from_mapping({"tls_cert": 5})
    assert GatewayConfig.from_mapping({"allowed_origins": "https://a.example,http://b.example:8080"}).allowed_origins \
        == ("https://a.example", "http://b.example:8080")


# ------------------------------------------------------------ 4. TLS and Origin


def self_signed(tmp_path: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made here: with `cryptography`, else `openssl req`."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        try:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True, timeout=60,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"neither the cryptography package nor a working openssl: {exc}")
        return str(cert), str(key)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(cert), str(key)


def test_tls_serves_wss_and_plain_ws_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)

    async def hostile(gw: Gateway) -> None:
        plain = f"ws://127.0.0.1:{gw.port}/"
        with pytest.raises((InvalidHandshake, OSError)):  # the TLS server hangs up on a plain HTTP request
            await connect(plain, open_timeout=3)
        with pytest.raises(ssl.SSLError):  # a client that does not trust the certificate
            await connect(url(gw), ssl=ssl.create_default_context(), open_timeout=3)

    async def scenario() -> None:
        async with running(ScriptedSink(every=5, at_end=2), tls_cert=cert, tls_key=key) as gw:
            assert gw.scheme == "wss" and url(gw).startswith("wss://")
            gw.client_ssl = ssl.create_default_context(cafile=cert)
            await asyncio.gather(healthy_session(gw, asyncio.Event()), hostile(gw))

    run(scenario(), timeout=40)
    (tmp_path / "junk.pem").write_text("not a certificate", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot load certificate"):
        Gateway(GatewayConfig(port=0, tokens=(TOKEN,), tls_cert=str(tmp_path / "junk.pem"), tls_key=key),
                ScriptedSink())


def test_allowed_origins_refuse_other_browser_origins(tmp_path: Path) -> None:
    async def hostile(gw: Gateway) -> None:
        await refused(403)(dial(gw, origin="https://evil.example"))
        ws = await dial(gw, origin="https://app.example")  # an allowed browser origin works
        await ws.send(hello("subscriber", session="*"))
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.close()

    async def scenario() -> None:
        async with running(ScriptedSink(every=5, at_end=2), allowed_origins=("https://app.example",)) as gw:
            # the healthy session's client sends no Origin header (not a browser): accepted
            await asyncio.gather(healthy_session(gw, asyncio.Event()), hostile(gw))

    run(scenario())


def test_serve_command_line_takes_tls_origins_and_a_tokens_file(tmp_path: Path, capsys) -> None:
    from actors.serve import gateway_config, serve_cli
    from magtkd_stream.cli import build_parser
    from magtkd_stream.config import load_config

    cfg = load_config("tiny", [])
    args = build_parser().parse_args(
        ["serve", "--config", "tiny", "--port", "0", "--tokens-file", tokens_file(tmp_path), "--tls-cert",
         str(tmp_path / "missing-cert.pem"), "--tls-key", str(tmp_path / "missing-key.pem"),
         "--allowed-origin", "https://app.example"]
    )
    gw_cfg = gateway_config(cfg, "127.0.0.1", 0, args.token, tokens_file=args.tokens_file, tls_cert=args.tls_cert,
                            tls_key=args.tls_key, allowed_origins=args.allowed_origin)
    assert gw_cfg.allowed_origins == ("https://app.example",) and ADMIN in token_table(gw_cfg).tokens
    assert serve_cli(cfg, args) == 2  # refused before any pipeline starts
    err = capsys.readouterr().err
    assert "cannot load certificate" in err and "Traceback" not in err
