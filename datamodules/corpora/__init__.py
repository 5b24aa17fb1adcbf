"""Corpus parsers: `get_parser(name)(root, **options) -> ParseResult`.

Configs name a corpus by one of the `CORPUS_PARSERS` keys; each parser reads the corpus exactly as
shipped (see docs/corpora.md) and reports every clip it could not use.
"""
from __future__ import annotations

from typing import Callable

from datamodules.corpora.ased import parse_ased
from datamodules.corpora.base import ParseResult, check_expected_counts, count_records
from datamodules.corpora.casia import parse_casia
from datamodules.corpora.cremad import parse_cremad
from datamodules.corpora.emodb import parse_emodb
from datamodules.corpora.esd import parse_esd
from datamodules.corpora.folders import parse_folders
from datamodules.corpora.iemocap import parse_iemocap
from datamodules.corpora.librispeech import parse_librispeech
from datamodules.corpora.msp_podcast import parse_msp_podcast
from datamodules.corpora.ravdess import parse_ravdess
from datamodules.corpora.voxceleb import load_trials, parse_voxceleb

CORPUS_PARSERS: dict[str, Callable[..., ParseResult]] = {
    "cremad": parse_cremad,
    "iemocap": parse_iemocap,
    "msp_podcast": parse_msp_podcast,
    "ravdess": parse_ravdess,
    "esd": parse_esd,
    "emodb": parse_emodb,
    "ased": parse_ased,
    "casia": parse_casia,
    "voxceleb": parse_voxceleb,
    "librispeech": parse_librispeech,
    "folders": parse_folders,
}


def get_parser(name: str) -> Callable[..., ParseResult]:
    if name not in CORPUS_PARSERS:
        raise ValueError(f"unknown corpus {name!r}; valid names: {', '.join(sorted(CORPUS_PARSERS))}")
    return CORPUS_PARSERS[name]


__all__ = ["CORPUS_PARSERS", "ParseResult", "check_expected_counts", "count_records", "get_parser", "load_trials"]
