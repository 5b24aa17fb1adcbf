"""Error messages about a corpus folder point to a layout document that exists in the repository."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT
from utils.config_checks import ConfigError, check_data_root, check_required

DOC = ROOT / "docs" / "corpora.md"
CORPORA = sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml") if p.stem != "base")


@pytest.mark.parametrize("corpus", CORPORA)
def test_every_data_config_has_its_layout_documented(corpus):
    assert f"`data={corpus}`" in DOC.read_text(), f"docs/corpora.md has no section for data={corpus}"


def test_missing_or_wrong_root_points_to_docs_corpora(tmp_path):
    cfg = OmegaConf.create({"data": {"corpus": "emodb", "root": "???"}})
    with pytest.raises(ConfigError, match="data.root is required.*docs/corpora.md") as e:
        check_required(cfg, ["data.root"])
    assert "FORMATS" not in str(e.value)
    with pytest.raises(ConfigError, match=r"data.root=.*does not exist.*emodb.*docs/corpora.md"):
        check_data_root(OmegaConf.create({"corpus": "emodb", "root": str(tmp_path / "nope")}))
    from datamodules.speaker_datamodule import SpeakerDataModule

    with pytest.raises(FileNotFoundError, match="docs/corpora.md"):
        SpeakerDataModule(corpus="emodb", root=str(tmp_path / "nope"))
    assert DOC.is_file()
