"""The operator's PKI tooling: the folder layout and key modes, what each certificate says, issuing, revoking."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from pki_helpers import is_revoked, load_revoked_serials, make_pki

from slperf.common.security.errors import TLSConfigError
from slperf.common.security.identity import Identity, identity_from_pem, load_revoked
from slperf.common.security.layout import client_paths, list_clients
from slperf.pki import add_client, init_pki, revoke


@pytest.fixture()
def pki(tmp_path: Path) -> Path:
    return make_pki(tmp_path / "certs")


def test_layout_and_key_modes(pki: Path):
    add_client(pki, "c2")
    for name in ("ca", "server", "operator", "clients/c1", "clients/c2"):
        assert stat.S_IMODE((pki / f"{name}.key").stat().st_mode) == 0o600, name
        assert stat.S_IMODE((pki / f"{name}.pem").stat().st_mode) == 0o644, name
    assert not [p for p in pki.rglob("*") if p.name.endswith(".tmp")]  # no leftovers from atomic writes
    assert list_clients(pki) == ["c1", "c2"]


def test_certificate_contents(pki: Path):
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    server = x509.load_pem_x509_certificate((pki / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "server"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    client = x509.load_pem_x509_certificate((pki / "clients" / "c1.pem").read_bytes())
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:slperf:client:c1"]
    assert client.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "c1"
    assert client.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "client"
    assert identity_from_pem((pki / "operator.pem").read_bytes()) == Identity("operator", "operator")
    assert identity_from_pem((pki / "server.pem").read_bytes()) == Identity("server", "server")
    assert identity_from_pem(b"not a certificate") is None


def test_server_names(tmp_path: Path):
    d = tmp_path / "certs"
    init_pki(d, server_names=["slperf.example.org", "::1", "10.0.0.7"], validity_days=30)
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["slperf.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["::1", "10.0.0.7"]
    for bad in (["bad name"], [], [""]):
        with pytest.raises(ValueError):
            init_pki(tmp_path / "other", server_names=bad)
        assert not (tmp_path / "other" / "ca.pem").exists()


def test_adding_a_client_never_reissues_others(pki: Path):
    before = {p.name: p.read_bytes() for p in pki.rglob("*") if p.is_file()}
    add_client(pki, "c2")
    after = {p.name: p.read_bytes() for p in pki.rglob("*") if p.is_file()}
    assert {k: after[k] for k in before} == before


def test_existing_client_needs_overwrite(pki: Path):
    old = (pki / "clients" / "c1.pem").read_bytes()
    with pytest.raises(TLSConfigError, match="c1 already exists"):
        add_client(pki, "c1")
    add_client(pki, "c1", overwrite=True)
    assert (pki / "clients" / "c1.pem").read_bytes() != old


@pytest.mark.parametrize("bad", ["", "-c1", ".hidden", "../evil", "a/b", "a b", "é", "x" * 64, "c1\n", 7])
def test_bad_client_ids_rejected(pki: Path, bad):
    with pytest.raises(TLSConfigError, match="invalid client id"):
        add_client(pki, bad)
    assert list_clients(pki) == ["c1"]


def test_good_client_ids_accepted(pki: Path):
    for cid in ("C", "a_b.c-d", "9" * 63):
        add_client(pki, cid)
        assert identity_from_pem(client_paths(pki, cid)[0].read_bytes()) == Identity("client", cid)


def test_init_pki_refuses_to_overwrite(pki: Path):
    ca = (pki / "ca.pem").read_bytes()
    with pytest.raises(TLSConfigError, match=r"CA already exists: .*ca\.pem.*overwrite"):
        init_pki(pki)
    assert (pki / "ca.pem").read_bytes() == ca
    init_pki(pki, overwrite=True)
    assert (pki / "ca.pem").read_bytes() != ca
    assert list_clients(pki) == []  # issued by the old CA, so removed


def test_revoke_records_id_and_serial(pki: Path):
    assert load_revoked(pki) == set()  # missing file is fine
    add_client(pki, "c2")
    revoke(pki, "c1")
    revoke(pki, "c1")  # idempotent
    serial = x509.load_pem_x509_certificate((pki / "clients" / "c1.pem").read_bytes()).serial_number
    entries = json.loads((pki / "revoked.json").read_text())
    assert [(e["id"], int(e["serial"], 16)) for e in entries] == [("c1", serial)]
    assert load_revoked(pki) == {"c1"}
    assert load_revoked_serials(pki) == {serial}
    assert is_revoked(pki, Identity("client", "c1"))
    assert not is_revoked(pki, Identity("client", "c2"))
    with pytest.raises(TLSConfigError, match="revoked"):
        add_client(pki, "c1", overwrite=True)
    with pytest.raises(TLSConfigError, match=r"clients/nope\.pem"):
        revoke(pki, "nope")


def test_revoking_keeps_what_others_wrote_in_the_list(pki: Path):
    add_client(pki, "c2")
    hand_written = [{"id": "old", "serial": "0A:1B", "note": "revoked by hand"}]
    (pki / "revoked.json").write_text(json.dumps(hand_written))
    revoke(pki, "c2")
    entries = json.loads((pki / "revoked.json").read_text())
    assert entries[0] == hand_written[0]
    assert [e["id"] for e in entries] == ["old", "c2"] and set(entries[1]) == {"id", "serial", "revoked_at"}
    assert load_revoked(pki) == {"old", "c2"}
