"""CITATION.cff parses, and says what pyproject.toml says about the package."""

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_citation_file_is_valid_yaml_and_matches_pyproject():
    yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of lightning) reads CITATION.cff")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["title"] == project["name"] == "zoomorph"
    assert str(citation["version"]) == project["version"]
    assert citation["license"] == project["license"]
    assert citation["authors"] == [{"name": "The zoomorph developers"}]
    refs = {(r["authors"][0]["family-names"], r["year"]): r for r in citation["references"]}
    gz2, challenge = refs["Willett", 2013], refs["Dieleman", 2015]
    assert (gz2["volume"], gz2["start"], gz2["doi"]) == (435, 2835, "10.1093/mnras/stt1458")
    assert "304 122 galaxies" in gz2["title"]
    assert (challenge["volume"], challenge["start"], challenge["doi"]) == (450, 1441, "10.1093/mnras/stv632")
    assert [a["family-names"] for a in challenge["authors"]] == ["Dieleman", "Willett", "Dambre"]
    for ref in citation["references"]:
        assert ref["type"] == "article" and ref["journal"] == "Monthly Notices of the Royal Astronomical Society"
