"""QIDO-RS at /dicom-web (issue 17): a real node holding real files, searched by a real
DICOMweb client (the ``dicomweb-client`` package) and by raw HTTP for what that client cannot
say; the answers read back with pydicom's ``Dataset.from_json`` and compared with what was
sent, and one search compared with Orthanc's DICOMweb plugin on the same files.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from compacs.synthetic import ct_series
from tests.support import web
from tests.support.dicomfiles import by_name, storage_files
from tests.support.node import NO_COMPRESSION, free_port, web_node
from tests.support.orthanc import DICOMWEB_PLUGIN, OrthancPeer
from tests.support.scu import send_datasets, send_files

TOKEN = "qido-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FILES = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm")  # emri: 10-frame MR
IDEOGRAPHIC = "DOE^TARO=山田^太郎=やまだ^たろう"  # PS3.5 6.2.1: three component groups
DICOM_JSON = "application/dicom+json"


def _generated() -> list[Dataset]:
    """Two generated studies whose PatientName starts with DOE: one with ideographic and
    phonetic groups (UTF-8), one plain."""
    out = []
    for ds in ct_series(3, 32, 32, patient_id="QIDO-J", patient_name=IDEOGRAPHIC):
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.StudyDescription = "QIDO IDEOGRAPHIC"
        out.append(ds)
    for ds in ct_series(2, 32, 32, patient_id="QIDO-D", patient_name="DOE^JANE"):
        ds.StudyDate = ds.SeriesDate = "20201231"
        out.append(ds)
    return out


def _sent() -> list[Dataset]:
    """Every data set the node holds, as sent (pixels left out)."""
    files = [dcmread(by_name(name), stop_before_pixels=True) for name in FILES]
    return files + _generated()


class Raw:
    """http.client against the node: what dicomweb-client cannot say (literal ``*``, odd
    Accept headers, no credentials)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, target: str, headers: dict[str, str] | None = None):
        return web.get(self.port, target, {**AUTH, **(headers or {})}, timeout=30)

    def json(self, target: str, headers: dict[str, str] | None = None) -> list[dict]:
        status, _, body = self.get(target, headers)
        assert status == 200, (target, status, body[:300])
        return json.loads(body)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A node (compression off, a token) holding the files and generated studies."""
    node, http_port = web_node(tmp_path_factory.mktemp("qido"), NO_COMPRESSION, TOKEN)
    node.start()
    try:
        files = {f.name: f for f in storage_files()}
        assert send_files(node.port, [files[n] for n in FILES]) == [0] * len(FILES)
        assert set(send_datasets(node.port, _generated())) == {0}
        client = DICOMwebClient(url=f"http://127.0.0.1:{http_port}/dicom-web", headers=AUTH)
        yield client, Raw(http_port), _sent()
    finally:
        node.stop()


def _read(results: list[dict]) -> list[Dataset]:
    return [Dataset.from_json(r) for r in results]


def _uids(results: list[dict], keyword: str) -> Counter:
    return Counter(str(ds[keyword].value) for ds in _read(results))


# -- dicomweb-client ----------------------------------------------------------------------
def test_study_search_by_name_answers_table_10_6_3_3_with_counts_as_numbers(archive):
    client, _, sent = archive
    found = client.search_for_studies(search_filters={"PatientName": "DOE*"})
    doe = [ds for ds in sent if str(ds.PatientName).upper().startswith("DOE")]
    assert _uids(found, "StudyInstanceUID") == Counter({ds.StudyInstanceUID for ds in doe})
    for result, ds in ((r, Dataset.from_json(r)) for r in found):
        ours = [s for s in doe if s.StudyInstanceUID == ds.StudyInstanceUID]
        first = ours[0]
        assert ds.PatientName == first.PatientName and ds.PatientID == first.PatientID
        assert (ds.StudyDate, ds.StudyTime) == (first.StudyDate, first.StudyTime)
        assert ds.AccessionNumber == first.AccessionNumber and ds.StudyID == first.StudyID
        assert ds.ReferringPhysicianName == first.ReferringPhysicianName
        assert ds.ModalitiesInStudy == "CT"
        # derived counts: IS as JSON numbers (PS3.18 F.2.3), equal to what was sent
        assert result["00201208"] == {"vr": "IS", "Value": [len(ours)]}
        assert result["00201206"] == {"vr": "IS", "Value": [1]}
        assert ds.InstanceAvailability == "ONLINE"
        # absolute, on this server's port, though dicomweb-client's Host header has none
        assert ds.RetrieveURL == f"{client.base_url}/studies/{first.StudyInstanceUID}"
    # PN as Alphabetic/Ideographic/Phonetic objects (PS3.18 F.2.2)
    ideo = next(r for r in found if r["00100020"]["Value"] == ["QIDO-J"])
    assert ideo["00100010"]["Value"] == [
        {"Alphabetic": "DOE^TARO", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert PersonName(Dataset.from_json(ideo).PatientName).ideographic == "山田^太郎"


def test_series_and_instances_at_every_level_and_nested(archive):
    client, _, sent = archive
    assert _uids(client.search_for_series(), "SeriesInstanceUID") == Counter(
        {ds.SeriesInstanceUID for ds in sent}
    )
    assert _uids(client.search_for_instances(), "SOPInstanceUID") == Counter(
        ds.SOPInstanceUID for ds in sent
    )
    by_sop = {ds.SOPInstanceUID: ds for ds in sent}
    for study in {ds.StudyInstanceUID for ds in sent}:
        mine = [ds for ds in sent if ds.StudyInstanceUID == study]
        series = client.search_for_series(study_instance_uid=study)
        assert _uids(series, "SeriesInstanceUID") == Counter({ds.SeriesInstanceUID for ds in mine})
        for one in _read(series):
            members = [ds for ds in mine if ds.SeriesInstanceUID == one.SeriesInstanceUID]
            assert one.Modality == members[0].Modality
            assert one.NumberOfSeriesRelatedInstances == len(members)
        found = client.search_for_instances(study_instance_uid=study)
        assert _uids(found, "SOPInstanceUID") == Counter(ds.SOPInstanceUID for ds in mine)
        for series_uid in {ds.SeriesInstanceUID for ds in mine}:
            nested = client.search_for_instances(
                study_instance_uid=study, series_instance_uid=series_uid
            )
            assert _uids(nested, "SOPInstanceUID") == Counter(
                ds.SOPInstanceUID for ds in mine if ds.SeriesInstanceUID == series_uid
            )
            for got in _read(nested):
                want = by_sop[got.SOPInstanceUID]
                assert got.SOPClassUID == want.SOPClassUID
                assert (got.Rows, got.Columns) == (want.Rows, want.Columns)
                assert got.BitsAllocated == want.BitsAllocated
                assert got.get("NumberOfFrames") == want.get("NumberOfFrames")
                assert got.get("InstanceNumber") == want.get("InstanceNumber")
                assert got.RetrieveURL.endswith(
                    f"/studies/{study}/series/{series_uid}/instances/{got.SOPInstanceUID}"
                )
    multiframe = [r for r in _read(client.search_for_instances()) if "NumberOfFrames" in r]
    assert [ds.NumberOfFrames for ds in multiframe if ds.NumberOfFrames] == [10]


def test_instances_search_carries_the_tables_of_the_levels_the_path_does_not_name(archive):
    client, _, sent = archive
    ct = next(ds for ds in sent if ds.PatientID == "QIDO-J")
    everywhere = _read(client.search_for_instances(search_filters={"PatientID": "QIDO-J"}))
    assert {ds.PatientName for ds in everywhere} == {ct.PatientName}  # study table
    assert {ds.SeriesNumber for ds in everywhere} == {ct.SeriesNumber}  # series table
    assert {ds.NumberOfStudyRelatedInstances for ds in everywhere} == {3}
    nested = _read(
        client.search_for_instances(
            study_instance_uid=ct.StudyInstanceUID, series_instance_uid=ct.SeriesInstanceUID
        )
    )
    assert all("PatientName" not in ds and "SeriesNumber" not in ds for ds in nested)


def test_includefield_by_keyword_tag_and_all(archive):
    client, _, sent = archive
    ct = next(ds for ds in sent if ds.PatientID == "QIDO-J")
    plain = _read(client.search_for_studies(search_filters={"PatientID": "QIDO-J"}))[0]
    assert "StudyDescription" not in plain  # not in Table 10.6.3-3
    asked = client.search_for_studies(
        search_filters={"PatientID": "QIDO-J"}, fields=["StudyDescription", "00100030"]
    )
    one = _read(asked)[0]
    assert one.StudyDescription == "QIDO IDEOGRAPHIC"
    assert one.PatientBirthDate == ct.PatientBirthDate
    found = client.search_for_series(search_filters={"PatientID": "QIDO-J"}, fields=["all"])
    every = _read(found)[0]
    assert every.SeriesDescription == ct.SeriesDescription
    assert every.BodyPartExamined == ""  # held, not sent: answered empty (Type 2 in C-FIND)
    assert every.StudyDescription == "QIDO IDEOGRAPHIC" and every.SeriesDate == ct.SeriesDate


def test_limit_and_offset_page_to_the_end(archive):
    client, _, sent = archive
    paged = client.search_for_instances(limit=2, get_remaining=True)  # pages to an empty page
    assert _uids(paged, "SOPInstanceUID") == Counter(ds.SOPInstanceUID for ds in sent)
    first = client.search_for_instances(limit=2, offset=0)
    second = client.search_for_instances(limit=2, offset=2)
    assert len(first) == len(second) == 2
    assert not set(_uids(first, "SOPInstanceUID")) & set(_uids(second, "SOPInstanceUID"))
    assert client.search_for_instances(limit=2, offset=len(sent)) == []


# -- raw HTTP -----------------------------------------------------------------------------
def test_values_are_percent_decoded_once_literal_and_encoded_give_one_answer(archive):
    _, raw, sent = archive
    studies = sorted({ds.StudyInstanceUID for ds in sent})[:2]
    pairs = [
        ("/studies?PatientName=DOE*", "/studies?PatientName=DOE%2A"),
        ("/studies?00100010=doe*", "/studies?00100010=doe%2a"),
        (
            f"/studies?StudyInstanceUID={studies[0]},{studies[1]}",
            f"/studies?StudyInstanceUID={studies[0]}%2C{studies[1]}",
        ),
        (
            "/studies?PatientID=QIDO-*&includefield=00081030,00100030",
            "/studies?PatientID=QIDO-%2A&includefield=00081030%2C00100030",
        ),
    ]
    for literal, encoded in pairs:
        a, b = raw.json("/dicom-web" + literal), raw.json("/dicom-web" + encoded)
        assert a == b and a, literal
    assert len(raw.json(f"/dicom-web{pairs[2][0]}")) == 2  # a UID list: both studies
    assert len(raw.json("/dicom-web/studies?PatientName=DOE*")) == 2
    assert {"00081030", "00100030"} <= set(raw.json(f"/dicom-web{pairs[3][0]}")[0])


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("StudyDate=2020-13-45", "StudyDate"),
        ("StudyDate=20201345", "StudyDate"),
        ("00080020=20201345", "StudyDate"),
        ("StudyTime=2561", "StudyTime"),
        ("NoSuchAttribute=1", "NoSuchAttribute"),
        ("99990010=x", "99990010"),
        ("Modality=CT", "Modality"),  # a series key on a study search
        ("includefield=NoSuchField", "includefield"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("offset=-1", "offset"),
        ("limit=ten", "limit"),
        ("fuzzymatching=maybe", "fuzzymatching"),
    ],
)
def test_malformed_search_is_400_naming_the_parameter(archive, query, named):
    _, raw, _ = archive
    status, headers, body = raw.get(f"/dicom-web/studies?{query}")
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")
    assert named in json.loads(body)["error"]


def test_bad_uid_in_the_path_is_400_naming_the_segment(archive):
    _, raw, _ = archive
    status, _, body = raw.get("/dicom-web/studies/1.2.abc/series")
    assert status == 400 and "study" in json.loads(body)["error"]


def test_accept_dicom_json_json_or_any_else_406(archive):
    _, raw, _ = archive
    target = "/dicom-web/studies?PatientID=QIDO-J"
    for accept, answered in (
        (None, DICOM_JSON),
        (DICOM_JSON, DICOM_JSON),
        ("application/json", "application/json"),
        ("*/*", DICOM_JSON),
        ("multipart/related; type=application/dicom+xml, application/*;q=0.5", DICOM_JSON),
    ):
        status, headers, body = raw.get(target, {"Accept": accept} if accept else {})
        assert status == 200 and headers["Content-Type"] == answered, accept
        assert json.loads(body)[0]["00100020"]["Value"] == ["QIDO-J"]
    for accept in ("application/dicom+xml", "text/html", "application/json;q=0"):
        status, _, body = raw.get(target, {"Accept": accept})
        assert status == 406 and "Accept" in json.loads(body)["error"], accept


def test_empty_result_is_200_empty_array_also_under_an_unknown_study(archive):
    _, raw, _ = archive
    for target in (
        "/studies?PatientName=NOBODY*",
        "/studies/1.2.3.999/series",
        "/studies/1.2.3.999/instances",
        "/studies/1.2.3.999/series/1.2.3.998/instances",
    ):
        status, headers, body = raw.get("/dicom-web" + target)
        assert (status, headers["Content-Type"], body) == (200, DICOM_JSON, b"[]"), target


def test_fuzzymatching_is_accepted_and_warned_about(archive):
    _, raw, _ = archive
    target = "/dicom-web/studies?PatientName=doe*"
    plain = raw.get(target)
    fuzzy = raw.get(target + "&fuzzymatching=true")
    literal = raw.get(target + "&fuzzymatching=false")
    assert plain[0] == fuzzy[0] == literal[0] == 200
    assert plain[2] == fuzzy[2] == literal[2]  # C-FIND's matching either way
    warning = fuzzy[1]["Warning"]
    assert warning.startswith("299 http://127.0.0.1:") and "fuzzymatching" in warning
    assert plain[1]["Warning"] is None and literal[1]["Warning"] is None


def test_authentication_as_the_rest_api(archive):
    _, raw, _ = archive
    conn = http.client.HTTPConnection("127.0.0.1", raw.port, timeout=30)
    try:
        conn.request("GET", "/dicom-web/studies")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 401 and json.loads(body) == {"error": "authentication required"}
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # global middleware kept
    assert raw.get("/dicom-web/studies", {"Authorization": "Bearer wrong"})[0] == 401
    status, headers, _ = raw.get("/dicom-web/studies")  # the token: admitted
    assert (status, headers["Content-Type"]) == (200, DICOM_JSON)


# -- side by side with Orthanc's DICOMweb plugin ------------------------------------------
def _comparable(element: dict) -> dict:
    """A JSON element as compared with Orthanc: of a PN only the Alphabetic group (Orthanc
    1.10 with its DICOMweb plugin 1.7 answers ``"^"`` for the Ideographic and Phonetic
    groups of a UTF-8 name; compacs's are checked against what was sent above)."""
    if element.get("vr") != "PN" or "Value" not in element:
        return element
    return {**element, "Value": [{"Alphabetic": v.get("Alphabetic")} for v in element["Value"]]}


def test_study_search_agrees_with_orthancs_dicomweb_plugin(archive, tmp_path: Path):
    """The same files in Orthanc (Debian's orthanc-dicomweb): the study search's attributes
    both answer have the same values (RetrieveURL compared below the root)."""
    if not Path(DICOMWEB_PLUGIN).exists():
        pytest.fail(f"{DICOMWEB_PLUGIN} is missing: `make deps-system` installs orthanc-dicomweb")
    _, raw, sent = archive
    peer = OrthancPeer(
        tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port(), dicomweb=True
    )
    with peer:
        files = {f.name: f for f in storage_files()}
        assert send_files(peer.dicom_port, [files[n] for n in FILES], aet="ORTHANC") == [0] * 3
        assert set(send_datasets(peer.dicom_port, _generated(), aet="ORTHANC")) == {0}
        orthanc = Raw(peer.http_port)
        for study in sorted({ds.StudyInstanceUID for ds in sent}):
            target = f"/dicom-web/studies?StudyInstanceUID={study}"
            theirs, ours = orthanc.json(target)[0], raw.json(target)[0]
            common = set(theirs) & set(ours)
            assert {"00100010", "00100020", "0020000D", "00201206", "00201208"} <= common
            # RetrieveURL: another root; Specific Character Set: Orthanc repeats the stored
            # one, compacs names UTF-8, which its index holds (the JSON is UTF-8 either way)
            differ = [
                (tag, ours[tag], theirs[tag])
                for tag in sorted(common - {"00081190", "00080005"})
                if _comparable(ours[tag]) != _comparable(theirs[tag])
            ]
            assert differ == [], study
            for answer in (ours, theirs):
                assert answer["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study}")
        # an unknown study under a nested path: Orthanc answers an empty search as well
        assert orthanc.get("/dicom-web/studies/1.2.3.999/series")[0] == 200
