"""Built-in synthetic emotional speech corpus (the default `data=synthetic`): no download, no licence."""
from datamodules.synthetic.corpus import (
    CORPUS_NAME,
    GENERATOR_VERSION,
    SyntheticCorpusConfig,
    corpus_dir,
    generate_corpus,
    parse_synthetic,
)
from datamodules.synthetic.synthesizer import (
    ALL_EMOTIONS,
    EMOTION_RULES,
    EmotionRule,
    SpeakerProfile,
    sample_speaker,
    synthesize_clip,
)

__all__ = [
    "ALL_EMOTIONS", "CORPUS_NAME", "EMOTION_RULES", "GENERATOR_VERSION", "EmotionRule", "SpeakerProfile",
    "SyntheticCorpusConfig", "corpus_dir", "generate_corpus", "parse_synthetic", "sample_speaker", "synthesize_clip",
]
