from __future__ import annotations

from collections import Counter

import pytest

from datamodules.corpora import CORPUS_PARSERS, get_parser
from datamodules.corpora.folders import parse_folders
from tests.fixtures_corpora import write_wav


def test_emotion_folders_with_speaker_subfolders(tmp_path):
    for emo, spk, clip in [("angry", "spkA", "1"), ("Anger", "spkB", "2"), ("sadness", "spkA", "3"), ("meh", "spkA", "4")]:
        write_wav(tmp_path / emo / spk / f"{clip}.wav")
    write_wav(tmp_path / "loose.wav")
    result = parse_folders(tmp_path)
    assert Counter((r.emotion, r.speaker) for r in result.records) == {
        ("angry", "folders:spkA"): 1, ("angry", "folders:spkB"): 1, ("sad", "folders:spkA"): 1}
    assert result.skip_counts == {"unknown label 'meh' (add it to label_map)": 1, "clip not inside an <emotion>/ folder": 1}
    assert result.warnings == []


def test_flat_emotion_folders_fall_back_to_stem_speakers(tmp_path):
    write_wav(tmp_path / "happy" / "a.wav")
    write_wav(tmp_path / "neutral" / "b.flac")
    result = parse_folders(tmp_path, corpus_name="mycorpus")
    assert sorted(r.speaker for r in result.records) == ["mycorpus:a", "mycorpus:b"]
    assert any("speaker-independent folds are impossible" in w for w in result.warnings)


def test_regexes_and_label_map(tmp_path):
    names = ["s01_ANG_1.wav", "s01_HAP_2.wav", "s02_EXC_3.wav", "s02_AMU_4.wav", "s03_XXX_5.wav", "junk.wav"]
    for n in names:
        write_wav(tmp_path / "clips" / n)
    result = parse_folders(tmp_path, emotion_regex=r"_(?P<emotion>[A-Z]{3})_", speaker_regex=r"^(s\d\d)_",
                           label_map={"AMU": "amused", "XXX": None}, merge_excited=True)
    recs = {r.utt_id: r for r in result.records}
    assert recs["clips/s01_ANG_1"].emotion == "angry" and recs["clips/s01_ANG_1"].speaker == "folders:s01"
    assert (recs["clips/s02_EXC_3"].emotion, recs["clips/s02_EXC_3"].emotion4) == ("excited", "happy")
    assert (recs["clips/s02_AMU_4"].emotion, recs["clips/s02_AMU_4"].emotion4) == ("amused", None)
    assert result.skip_counts == {"label 'XXX' excluded by label_map": 1, "emotion not parseable by emotion_regex": 1}


def test_regex_on_relative_path_and_parent_speaker(tmp_path):
    write_wav(tmp_path / "speaker7" / "take_neutral.wav")
    write_wav(tmp_path / "speaker8" / "take_sad.wav")
    result = parse_folders(tmp_path, emotion_regex=r"take_(\w+)\.wav$")
    assert sorted((r.speaker, r.emotion) for r in result.records) == [("folders:speaker7", "neutral"),
                                                                      ("folders:speaker8", "sad")]
    rel = parse_folders(tmp_path, emotion_regex=r"take_(\w+)\.wav$", speaker_regex=r"^speaker(\d)/",
                        regex_target="relpath")
    assert sorted(r.speaker for r in rel.records) == ["folders:7", "folders:8"]
    missing_spk = parse_folders(tmp_path, emotion_regex=r"take_(\w+)", speaker_regex=r"^spk(\d)")
    assert missing_spk.skip_counts == {"speaker not parseable by speaker_regex": 2}


def test_bad_options(tmp_path):
    write_wav(tmp_path / "happy" / "a.wav")
    with pytest.raises(ValueError, match="emotion_regex"):
        parse_folders(tmp_path, emotion_regex="(unclosed")
    with pytest.raises(ValueError, match="capture group"):
        parse_folders(tmp_path, speaker_regex="abc")
    with pytest.raises(FileNotFoundError, match="no audio files"):
        parse_folders(tmp_path, extensions=(".mp3",))


def test_registry():
    assert set(CORPUS_PARSERS) == {"cremad", "iemocap", "msp_podcast", "ravdess", "esd", "emodb", "ased", "casia",
                                   "voxceleb", "librispeech", "folders"}
    assert get_parser("folders") is parse_folders
    with pytest.raises(ValueError, match="valid names: ased, casia, cremad, emodb"):
        get_parser("crema")
