"""Procedural source-filter speech in which speaker identity and emotion are separate, known factors.

Why: the default run must work without licensed corpora, and a generator whose factors are known
lets tests check that a model learns emotion across speakers (and speaker across emotions)
rather than a shortcut. Acoustics follow the classic source-filter model (Fant 1960):

* source: Rosenberg (1971) glottal pulses with per-period jitter/shimmer, open-quotient-dependent
  tenseness, aspiration noise gated by the open phase (breathiness), optional creak
  (period-halving + alternating amplitude);
* filter: five cascaded 2nd-order formant resonators (Klatt 1980) whose targets come from
  Hillenbrand et al. (1995) vowels, scaled by the speaker's vocal-tract length and interpolated
  through consonant loci, plus a speaker-specific piriform-fossa antiresonance (Dang & Honda 1997);
  fricatives/bursts are band-shaped noise;
* prosody: CV(C) syllables grouped into words with pauses, an F0 contour with declination,
  per-syllable pitch accents and a final fall or rise.

Time-varying filtering is done frame-wise in the frequency domain (weighted overlap-add with an
analysis window only, hop = window/2), so a whole clip is a handful of FFTs; no per-sample Python.
Emotion effects (`EMOTION_RULES`) act relative to the speaker's own parameters, scaled by a
random per-clip intensity and blurred by per-clip noise so classes overlap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sp_fft

ALL_EMOTIONS = ("angry", "happy", "neutral", "sad", "fear", "disgust", "surprise")

# Male reference formants F1-F4 (Hz), Hillenbrand et al. (1995) adult-male averages; F5 added.
VOWEL_FORMANTS: dict[str, tuple[float, float, float, float, float]] = {
    "i": (342, 2322, 3000, 3657, 4500),
    "I": (427, 2034, 2684, 3618, 4500),
    "e": (476, 2089, 2691, 3649, 4500),
    "E": (580, 1799, 2605, 3677, 4500),
    "ae": (588, 1952, 2601, 3624, 4500),
    "a": (768, 1333, 2522, 3687, 4500),
    "O": (652, 997, 2538, 3486, 4500),
    "o": (497, 910, 2459, 3384, 4500),
    "U": (469, 1122, 2434, 3400, 4500),
    "u": (378, 997, 2343, 3357, 4500),
    "V": (623, 1200, 2550, 3557, 4500),
}
_VOWELS = tuple(VOWEL_FORMANTS)
_BASE_BANDWIDTHS = np.array([70.0, 90.0, 130.0, 220.0, 300.0])
_SCHWA = np.array([500.0, 1500.0])  # centre of the F1/F2 vowel space (male reference)


@dataclass(frozen=True)
class Consonant:
    manner: str  # plosive | fricative | nasal | approximant
    voiced: bool
    locus: tuple[float, float, float]  # F1, F2, F3 at the consonant (male reference, Hz)
    noise_center_hz: float = 0.0  # frication / burst band (male reference)
    noise_bandwidth_hz: float = 0.0
    noise_level: float = 0.0  # relative to the strongest fricative


CONSONANTS: dict[str, Consonant] = {
    "p": Consonant("plosive", False, (250, 800, 2200), 1200, 2500, 0.5),
    "t": Consonant("plosive", False, (250, 1800, 2700), 4000, 2500, 0.8),
    "k": Consonant("plosive", False, (250, 2000, 2500), 2000, 800, 0.8),
    "b": Consonant("plosive", True, (250, 800, 2200), 1200, 2500, 0.3),
    "d": Consonant("plosive", True, (250, 1800, 2700), 4000, 2500, 0.45),
    "g": Consonant("plosive", True, (250, 2000, 2500), 2000, 800, 0.45),
    "f": Consonant("fricative", False, (300, 1000, 2300), 4500, 5000, 0.3),
    "s": Consonant("fricative", False, (300, 1700, 2700), 5500, 2200, 1.0),
    "sh": Consonant("fricative", False, (300, 1900, 2500), 3000, 1400, 0.9),
    "v": Consonant("fricative", True, (300, 1000, 2300), 4500, 5000, 0.15),
    "z": Consonant("fricative", True, (300, 1700, 2700), 5500, 2200, 0.5),
    "m": Consonant("nasal", True, (260, 1000, 2200)),
    "n": Consonant("nasal", True, (260, 1500, 2500)),
    "l": Consonant("approximant", True, (350, 1000, 2700)),
    "w": Consonant("approximant", True, (300, 700, 2200)),
    "j": Consonant("approximant", True, (280, 2200, 3000)),
}
_CONSONANT_NAMES = tuple(CONSONANTS)
_CODAS = tuple(name for name, c in CONSONANTS.items() if c.manner in ("nasal", "fricative"))


@dataclass(frozen=True)
class SpeakerProfile:
    """A voice: the parameters emotion rules modify. Written to speakers.json."""

    speaker_id: str
    gender: str  # "F" / "M"
    f0_base_hz: float  # habitual pitch floor of neutral speech
    f0_range_st: float  # typical pitch-accent excursion (semitones)
    vtl_factor: float  # formant scale: >1 = shorter vocal tract (reference adult male = 1)
    formant_offsets: tuple[float, ...]  # idiosyncratic per-formant scale (F1..F5)
    fossa_zero_hz: float  # piriform-fossa antiresonance (male reference, scaled by vtl_factor): a stable speaker cue
    bandwidth_scale: float
    tilt_db_per_oct: float  # extra source tilt relative to 1 kHz; negative = darker voice
    open_quotient: float  # glottal open fraction: low = tense/pressed, high = lax/breathy
    breathiness: float  # aspiration noise RMS relative to voiced excitation RMS
    jitter: float  # sd of relative period-to-period F0 perturbation
    shimmer: float  # sd of period-to-period log-amplitude perturbation
    syllable_rate: float  # syllables per second in neutral speech
    loudness_db: float  # habitual level offset


@dataclass(frozen=True)
class EmotionRule:
    """How an emotion moves a speaker's parameters (additive in log/semitone/dB domains, else multiplicative).

    Directions follow the reviews of Scherer (2003) and Juslin & Laukka (2003); voice-quality choices
    follow Gobl & Ni Chasaide (2003) and Tartter (1980, smiled speech). Magnitudes are comparable to the
    spread between speakers, so some cues (F0 level above all) only tell the emotion relative to the
    speaker's own baseline. Each clip scales the whole rule by a random intensity in [0.5, 1.3].
    """

    f0_shift_st: float = 0.0
    f0_range_scale: float = 1.0
    tempo_scale: float = 1.0
    energy_db: float = 0.0
    tilt_db_per_oct: float = 0.0  # positive = flatter spectrum, more high-frequency energy
    open_quotient_shift: float = 0.0  # negative = tenser voice
    breathiness_scale: float = 1.0
    jitter_scale: float = 1.0
    shimmer_scale: float = 1.0
    formant_scale: float = 1.0  # all formants (lip spreading in smiled speech raises them)
    f1_scale: float = 1.0  # jaw opening in high-arousal speech raises F1
    pause_scale: float = 1.0  # probability/length of inter-word pauses
    articulation_db: float = 0.0  # consonant (frication/burst) level vs vowels: precise > 0, slurred < 0
    vowel_space: float = 1.0  # F1/F2 distance of vowel targets from schwa: hyper- (>1) vs hypo-articulation (<1)
    final_contour: float = -0.5  # F0 movement across the last vowel, in units of the F0 range (>0 = rise)
    creak: float = 0.0  # probability that a vowel ends in creaky voice
    tremor_st: float = 0.0  # depth of a 5-7 Hz F0 tremor


EMOTION_RULES: dict[str, EmotionRule] = {
    "neutral": EmotionRule(),
    "angry": EmotionRule(f0_shift_st=4.0, f0_range_scale=1.5, tempo_scale=1.18, energy_db=8.0, tilt_db_per_oct=4.0,
                         open_quotient_shift=-0.12, breathiness_scale=0.5, jitter_scale=1.3, shimmer_scale=1.2,
                         f1_scale=1.08, pause_scale=0.7, articulation_db=3.0, vowel_space=1.1, final_contour=-0.6),
    "happy": EmotionRule(f0_shift_st=4.0, f0_range_scale=1.8, tempo_scale=1.15, energy_db=4.0, tilt_db_per_oct=1.5,
                         open_quotient_shift=-0.04, breathiness_scale=0.9, formant_scale=1.04, f1_scale=1.03,
                         pause_scale=0.8, articulation_db=1.0, vowel_space=1.05, final_contour=-0.3),
    "sad": EmotionRule(f0_shift_st=-2.0, f0_range_scale=0.5, tempo_scale=0.72, energy_db=-6.0, tilt_db_per_oct=-3.5,
                       open_quotient_shift=0.12, breathiness_scale=2.2, jitter_scale=1.3, shimmer_scale=1.3,
                       formant_scale=0.98, f1_scale=0.95, pause_scale=1.8, articulation_db=-4.0, vowel_space=0.8,
                       final_contour=-0.6),
    "fear": EmotionRule(f0_shift_st=5.0, f0_range_scale=0.8, tempo_scale=1.25, energy_db=1.0, tilt_db_per_oct=0.5,
                        open_quotient_shift=0.08, breathiness_scale=1.8, jitter_scale=2.5, shimmer_scale=1.5,
                        pause_scale=1.2, vowel_space=0.95, final_contour=-0.2, tremor_st=0.6),
    "disgust": EmotionRule(f0_shift_st=-2.5, f0_range_scale=0.9, tempo_scale=0.8, energy_db=-2.0, tilt_db_per_oct=-1.5,
                           open_quotient_shift=-0.05, jitter_scale=2.5, shimmer_scale=2.5, pause_scale=1.3,
                           articulation_db=-1.0, vowel_space=0.9, final_contour=-0.8, creak=0.5),
    "surprise": EmotionRule(f0_shift_st=4.0, f0_range_scale=1.8, energy_db=3.0, tilt_db_per_oct=1.0,
                            breathiness_scale=1.2, articulation_db=1.0, vowel_space=1.05, final_contour=1.2),
}
assert set(EMOTION_RULES) == set(ALL_EMOTIONS)


def sample_speaker(rng: np.random.Generator, speaker_id: str, gender: str) -> SpeakerProfile:
    """Draw a voice; ranges follow adult norms (e.g. Titze 1994 for F0, Hillenbrand 1995 for formant scaling)."""
    if gender not in ("F", "M"):
        raise ValueError(f"sample_speaker: gender must be 'F' or 'M', got {gender!r}")
    female = gender == "F"
    f0 = math.exp(rng.normal(math.log(205.0 if female else 115.0), 0.13 if female else 0.15))
    f0 = float(np.clip(f0, 150.0, 290.0) if female else np.clip(f0, 80.0, 170.0))
    return SpeakerProfile(
        speaker_id=speaker_id,
        gender=gender,
        f0_base_hz=f0,
        f0_range_st=float(rng.uniform(3.0, 6.0)),
        vtl_factor=float(rng.normal(1.16 if female else 1.0, 0.07)),
        formant_offsets=tuple(float(x) for x in np.exp(rng.normal(0.0, 0.06, 5))),
        fossa_zero_hz=float(rng.uniform(3800.0, 5800.0)),
        bandwidth_scale=float(math.exp(rng.normal(0.0, 0.25))),
        tilt_db_per_oct=float(rng.normal(0.0, 1.2)),
        open_quotient=float(rng.uniform(0.55, 0.7) if female else rng.uniform(0.45, 0.6)),
        breathiness=float(math.exp(rng.normal(math.log(0.12 if female else 0.08), 0.4))),
        jitter=float(rng.uniform(0.004, 0.012)),
        shimmer=float(rng.uniform(0.03, 0.08)),
        syllable_rate=float(rng.uniform(4.2, 5.8)),
        loudness_db=float(rng.normal(0.0, 1.5)),
    )


@dataclass
class _Tracks:
    """Piecewise-linear control tracks, filled phone by phone."""

    voice: list = field(default_factory=list)  # (t, level) anchors of the voicing amplitude
    fric: list = field(default_factory=list)  # frication / burst noise amplitude
    asp: list = field(default_factory=list)  # aspiration after voiceless plosives
    nasal: list = field(default_factory=list)  # nasal murmur weight
    creak: list = field(default_factory=list)  # creaky-voice weight
    formants: list = field(default_factory=list)  # (t, F1..F5 array)
    noise_bands: list = field(default_factory=list)  # (t_mid, center_hz, bandwidth_hz)
    accents: list = field(default_factory=list)  # (t_center, height in units of the F0 range, width_s)
    vowels: list = field(default_factory=list)  # (start, end)

    def level(self, a: float, b: float, voice=0.0, fric=0.0, asp=0.0, nasal=0.0, ramp=0.012) -> None:
        r = min(ramp, (b - a) / 3.0)
        for track, value in ((self.voice, voice), (self.fric, fric), (self.asp, asp), (self.nasal, nasal)):
            track.append((a + r, value))
            track.append((b - r, value))


@dataclass
class _ClipParams:
    f0_shift_st: float
    f0_range_st: float
    syllable_rate: float
    energy_db: float
    tilt_db_per_oct: float
    open_quotient: float
    breathiness: float
    jitter: float
    shimmer: float
    formant_scale: np.ndarray  # (5,)
    bandwidth_scale: float
    pause_scale: float
    articulation_db: float
    vowel_space: float
    final_contour: float
    creak: float
    tremor_st: float


def _clip_params(speaker: SpeakerProfile, rule: EmotionRule, intensity: float, rng: np.random.Generator) -> _ClipParams:
    k = intensity
    fscale = speaker.vtl_factor * np.asarray(speaker.formant_offsets) * rule.formant_scale ** k
    fscale[0] *= rule.f1_scale ** k
    return _ClipParams(
        f0_shift_st=k * rule.f0_shift_st + rng.normal(0.0, 1.0),
        f0_range_st=speaker.f0_range_st * rule.f0_range_scale ** k * math.exp(rng.normal(0.0, 0.15)),
        syllable_rate=speaker.syllable_rate * rule.tempo_scale ** k * math.exp(rng.normal(0.0, 0.07)),
        energy_db=speaker.loudness_db + k * rule.energy_db + rng.normal(0.0, 1.5),
        tilt_db_per_oct=speaker.tilt_db_per_oct + k * rule.tilt_db_per_oct + rng.normal(0.0, 1.0),
        open_quotient=float(np.clip(speaker.open_quotient + k * rule.open_quotient_shift + rng.normal(0.0, 0.03), 0.3, 0.85)),
        breathiness=speaker.breathiness * rule.breathiness_scale ** k * math.exp(rng.normal(0.0, 0.2)),
        jitter=speaker.jitter * rule.jitter_scale ** k * math.exp(rng.normal(0.0, 0.15)),
        shimmer=speaker.shimmer * rule.shimmer_scale ** k * math.exp(rng.normal(0.0, 0.15)),
        formant_scale=fscale,
        bandwidth_scale=speaker.bandwidth_scale,
        pause_scale=rule.pause_scale ** k,
        articulation_db=k * rule.articulation_db,
        vowel_space=rule.vowel_space ** k,
        final_contour=rule.final_contour + rng.normal(0.0, 0.2),
        creak=min(1.0, rule.creak * k),
        tremor_st=rule.tremor_st * k,
    )


def _plan(duration: float, p: _ClipParams, rng: np.random.Generator) -> _Tracks:
    """Lay out silence, words of CV(C) syllables and pauses on the time axis."""
    tr = _Tracks()
    ds = 5.0 / p.syllable_rate  # base durations below are for 5 syllables/s
    t = min(float(rng.uniform(0.05, 0.2)), 0.15 * duration)  # leading silence
    end = duration - min(float(rng.uniform(0.08, 0.2)), 0.15 * duration)  # before trailing silence
    tr.level(0.0, t)
    tr.creak.append((0.0, 0.0))
    fs = p.formant_scale

    def consonant(c: Consonant, t0: float, v_formants: np.ndarray) -> float:
        locus = np.concatenate([np.array(c.locus) * fs[:3], v_formants[3:]])  # F4/F5 follow the vowel
        # Locus equation: formant onsets move part of the way from the vowel target towards the locus.
        onset = v_formants + 0.6 * (locus - v_formants)
        if c.manner == "plosive":
            closure, burst = rng.uniform(0.04, 0.07) * ds, rng.uniform(0.008, 0.015)
            aspiration = 0.0 if c.voiced else rng.uniform(0.025, 0.05) * ds
            tr.level(t0, t0 + closure, voice=0.12 if c.voiced else 0.0)
            tr.level(t0 + closure, t0 + closure + burst, fric=c.noise_level, ramp=0.002)
            tr.noise_bands.append((t0 + closure + burst / 2, c.noise_center_hz, c.noise_bandwidth_hz))
            if aspiration:
                tr.level(t0 + closure + burst, t0 + closure + burst + aspiration, asp=0.6, ramp=0.005)
            t1 = t0 + closure + burst + aspiration
            tr.formants.append((t0 + closure, locus))
        elif c.manner == "fricative":
            d = rng.uniform(0.07, 0.11) * ds
            tr.level(t0, t0 + d, voice=0.4 if c.voiced else 0.0, fric=c.noise_level, ramp=0.015)
            tr.noise_bands.append((t0 + d / 2, c.noise_center_hz, c.noise_bandwidth_hz))
            t1 = t0 + d
            tr.formants.append((t0 + d / 2, locus))
        else:
            d = rng.uniform(0.045, 0.075) * ds
            nasal = c.manner == "nasal"
            tr.level(t0, t0 + d, voice=0.4 if nasal else 0.65, nasal=1.0 if nasal else 0.0, ramp=0.01)
            t1 = t0 + d
            tr.formants.append((t0 + d / 2, locus))
            onset = locus
        tr.formants.append((t1, onset))
        return t1

    n_syll, full = 0, False
    while not full and (t < end or n_syll == 0):
        word_length = int(rng.integers(1, 4))
        for i in range(word_length):
            vowel = _VOWELS[int(rng.integers(len(_VOWELS)))]
            v_formants = np.array(VOWEL_FORMANTS[vowel], dtype=np.float64)
            v_formants[:2] = _SCHWA + p.vowel_space * (v_formants[:2] - _SCHWA)
            v_formants *= fs
            accented = rng.random() < 0.4 or n_syll == 0
            word_final = i == word_length - 1
            v_dur = rng.uniform(0.09, 0.15) * ds * (1.3 if accented else 1.0) * (1.25 if word_final else 1.0)
            c = CONSONANTS[_CONSONANT_NAMES[int(rng.integers(len(CONSONANTS)))]] if rng.random() < 0.8 else None
            c_est = 0.11 * ds if c is not None else 0.0
            if t + c_est + v_dur > end:
                if n_syll > 0:
                    full = True
                    break
                v_dur = max(0.05, end - t - c_est)  # always at least one syllable
            t_v = consonant(c, t, v_formants) if c is not None else t
            a, b = t_v, t_v + v_dur
            tr.level(a, b, voice=1.0 if accented else 0.8, ramp=0.02)
            tr.formants.append((a + 0.35 * v_dur, v_formants))
            tr.formants.append((b - 0.2 * v_dur, v_formants))
            tr.vowels.append((a, b))
            if accented:
                tr.accents.append(((a + b) / 2, float(rng.uniform(0.6, 1.0)), 0.35 * v_dur + 0.03))
            if p.creak > 0 and rng.random() < p.creak:  # vowel ends in creak
                tr.creak += [(a + 0.5 * v_dur, 0.0), (b, 1.0), (b + 0.01, 0.0)]
            t = b
            if rng.random() < 0.2:  # a nasal or fricative coda closes the syllable
                coda = CONSONANTS[_CODAS[int(rng.integers(len(_CODAS)))]]
                d = rng.uniform(0.05, 0.08) * ds
                tr.level(t, t + d, voice=0.4 if coda.voiced else 0.0, fric=coda.noise_level,
                         nasal=float(coda.manner == "nasal"))
                if coda.manner == "fricative":
                    tr.noise_bands.append((t + d / 2, coda.noise_center_hz, coda.noise_bandwidth_hz))
                t += d
            n_syll += 1
        if not full and rng.random() < min(0.9, 0.3 * p.pause_scale):  # pause between words
            pause = rng.uniform(0.08, 0.22) * p.pause_scale * ds
            tr.level(t, t + pause)
            t += pause
    tr.level(t, max(duration, t + 0.02))
    return tr


def _interp_anchors(times: np.ndarray, anchors: list) -> np.ndarray:
    xs = np.array([a[0] for a in anchors], dtype=np.float64)
    ys = np.array([a[1] for a in anchors], dtype=np.float64)
    order = np.argsort(xs, kind="stable")
    return np.interp(times, xs[order], ys[order])


def _stft_params(sample_rate: int) -> tuple[int, int, int]:
    n_win = 2 ** int(round(math.log2(0.032 * sample_rate)))
    return n_win, n_win // 2, 2 * n_win


def _analyse(x: np.ndarray, n_win: int, hop: int, n_fft: int) -> np.ndarray:
    window = np.hanning(n_win + 1)[:-1].astype(np.float32)  # periodic Hann: overlaps at hop=n/2 sum to 1
    padded = np.pad(x.astype(np.float32), (n_win, n_win + hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_win)[::hop]
    return sp_fft.rfft(frames * window, n=n_fft, axis=-1)


def _synthesise(spec: np.ndarray, n: int, n_win: int, hop: int, n_fft: int) -> np.ndarray:
    """Overlap-add of filtered frames (analysis window only): exact LTI filtering when the filter is constant."""
    n_frames, per_frame = spec.shape[0], n_fft // hop
    y = sp_fft.irfft(spec, n=n_fft, axis=-1).reshape(n_frames, per_frame, hop)
    blocks = np.zeros((n_frames + per_frame, hop), dtype=y.dtype)
    for j in range(per_frame):
        blocks[j:j + n_frames] += y[:, j, :]
    return blocks.ravel()[n_win:n_win + n]


def _formant_response(formants: np.ndarray, bandwidths: np.ndarray, n_fft: int, sample_rate: int) -> np.ndarray:
    """Cascade of unity-DC-gain 2nd-order resonators (Klatt 1980), evaluated per frame -> (frames, bins).

    The cascade's denominator is a degree-10 polynomial in z^-1; its values on the unit circle are one
    real FFT of its coefficients, far cheaper than multiplying five complex responses bin by bin.
    """
    audible = formants < 0.46 * sample_rate  # resonances above Nyquist are left out
    r = np.where(audible, np.exp(-math.pi * bandwidths / sample_rate), 0.0)
    c = np.where(audible, 2.0 * r * np.cos(2.0 * math.pi * formants / sample_rate), 0.0)
    poly = np.zeros((formants.shape[0], 2 * formants.shape[1] + 1))
    poly[:, 0] = 1.0
    for k in range(formants.shape[1]):  # multiply by (1 - c z^-1 + r^2 z^-2)
        product = poly.copy()
        product[:, 1:] -= c[:, k:k + 1] * poly[:, :-1]
        product[:, 2:] += r[:, k:k + 1] ** 2 * poly[:, :-2]
        poly = product
    gain = np.prod(1.0 - c + r * r, axis=1)
    return (gain[:, None] / sp_fft.rfft(poly, n=n_fft, axis=-1)).astype(np.complex64)


def _antiresonance(freq_hz: float, bandwidth_hz: float, freqs: np.ndarray, sample_rate: int) -> np.ndarray:
    """Klatt (1980) antiresonator with unity DC gain; identity when the zero lies above Nyquist."""
    if freq_hz >= 0.46 * sample_rate:
        return np.ones(freqs.size, dtype=np.complex64)
    r = math.exp(-math.pi * bandwidth_hz / sample_rate)
    c = 2.0 * r * math.cos(2.0 * math.pi * freq_hz / sample_rate)
    z1 = np.exp(-2j * math.pi * freqs / sample_rate)
    return ((1.0 - c * z1 + r * r * z1 * z1) / (1.0 - c + r * r)).astype(np.complex64)


def _upsample(coarse: np.ndarray, step: int, n: int) -> np.ndarray:
    """Linear interpolation between control points `step` samples apart (vectorised, no np.interp per sample)."""
    coarse = coarse.astype(np.float32)
    ramp = np.arange(step, dtype=np.float32) / np.float32(step)
    return (coarse[:-1, None] + np.diff(coarse)[:, None] * ramp[None, :]).ravel()[:n]


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance white noise; uniform rather than Gaussian because it is several times cheaper to draw,
    and every use is band-filtered afterwards (which makes it Gaussian-like anyway)."""
    return (rng.random(n, dtype=np.float32) - np.float32(0.5)) * np.float32(math.sqrt(12.0))


def _rosenberg_table(open_quotient: float, size: int = 4096):
    """Rosenberg (1971) glottal flow over one period as a lookup table with linear interpolation."""
    tp, tn = 0.7 * open_quotient, 0.3 * open_quotient
    x = np.arange(size + 1) / size
    table = np.where(x < tp, 0.5 * (1.0 - np.cos(math.pi * x / tp)),
                     np.where(x < tp + tn, np.cos(0.5 * math.pi * np.clip(x - tp, 0.0, None) / tn), 0.0))
    table = table.astype(np.float32)

    def flow(frac: np.ndarray) -> np.ndarray:
        pos = frac * size
        i = np.minimum(pos.astype(np.int64), size - 1)
        w = pos - i
        return table[i] + (table[i + 1] - table[i]) * w

    return flow


def _f0_contour(speaker: SpeakerProfile, p: _ClipParams, tr: _Tracks, tc: np.ndarray, coarse_voice: np.ndarray,
                duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """F0 in semitones above the speaker's base on the control grid: declination + accents + final movement."""
    t_first, t_last = tr.vowels[0][0], tr.vowels[-1][1]
    rel = np.clip((tc - t_first) / max(t_last - t_first, 1e-3), 0.0, 1.0)
    st = p.f0_range_st * 0.25 * (1.0 - 2.0 * rel)
    for centre, height, width in tr.accents:
        st += p.f0_range_st * height * np.exp(-0.5 * ((tc - centre) / width) ** 2)
    last_a, last_b = tr.vowels[-1]
    st += p.final_contour * p.f0_range_st * np.clip((tc - last_a) / (last_b - last_a), 0.0, 1.0)
    if p.tremor_st:
        st += p.tremor_st * np.sin(2 * math.pi * rng.uniform(5.0, 7.0) * tc + rng.uniform(0, 2 * math.pi))
    # The shape is centred on its voiced mean, so the level is set by the speaker's base and the
    # emotion's shift alone (range and accents change the excursions, not the average).
    weight = np.clip(coarse_voice - 0.3, 0.0, None)
    st += p.f0_shift_st - float((st * weight).sum() / max(weight.sum(), 1e-9))
    wander_t = np.arange(0.0, duration_s + 0.25, 0.25)
    return st + np.interp(tc, wander_t, rng.normal(0.0, 0.4, wander_t.size))


def _glottal_source(f0: np.ndarray, voice_env: np.ndarray, asp_env: np.ndarray, creak: np.ndarray,
                    p: _ClipParams, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Differentiated Rosenberg pulses with jitter/shimmer/creak, and aspiration noise gated by the open phase."""
    n = f0.size
    k0 = (np.cumsum(f0) / sample_rate).astype(np.int64)
    jitter = np.clip(rng.standard_normal(int(k0[-1]) + 2)[k0] * (p.jitter + 0.06 * creak), -0.3, 0.3)
    phase = np.cumsum(f0 * (1.0 + jitter)) / sample_rate  # float64: accumulates over thousands of periods
    period = phase.astype(np.int64)
    frac = (phase - period).astype(np.float32)
    flow = _rosenberg_table(p.open_quotient)(frac)
    amp = np.exp(rng.normal(0.0, p.shimmer, int(period[-1]) + 2)).astype(np.float32)[period]
    amp *= 1.0 - 0.6 * creak * (period & 1)  # creak: alternating (diplophonic) pulse amplitudes
    derivative = np.diff(flow, prepend=flow[0])
    ref = float(np.sqrt(np.mean(derivative ** 2))) + 1e-12
    pulses = derivative * amp * voice_env
    open_phase = np.where(frac < p.open_quotient, np.float32(1.0), np.float32(0.4))
    aspiration = _white(rng, n) * (ref * (p.breathiness * open_phase * voice_env + 0.5 * asp_env))
    return pulses, aspiration


def synthesize_clip(speaker: SpeakerProfile, emotion: str, duration_s: float, sample_rate: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One utterance of `speaker` in `emotion`. Returns float32 audio in [-1, 1] and facts about it."""
    if emotion not in EMOTION_RULES:
        raise ValueError(f"synthesize_clip: unknown emotion {emotion!r}; expected one of {ALL_EMOTIONS}")
    if duration_s < 0.3:
        raise ValueError(f"synthesize_clip: duration_s={duration_s} is too short; expected >= 0.3 s")
    intensity = float(rng.uniform(0.5, 1.3)) if emotion != "neutral" else 0.0
    p = _clip_params(speaker, EMOTION_RULES[emotion], intensity, rng)
    tr = _plan(duration_s, p, rng)

    n = int(round(duration_s * sample_rate))
    # Controls are computed on a 0.5 ms grid and linearly upsampled: cheap, and smooth at audio rate.
    step = max(1, sample_rate // 2000)
    tc = np.arange(-(-n // step) + 1) * (step / sample_rate)
    coarse_voice = _interp_anchors(tc, tr.voice)
    voice_env, fric_env, asp_env, creak = (
        _upsample(c, step, n) for c in (coarse_voice, *(_interp_anchors(tc, a) for a in (tr.fric, tr.asp, tr.creak))))
    st = _f0_contour(speaker, p, tr, tc, coarse_voice, duration_s, rng)
    f0 = np.clip(speaker.f0_base_hz * np.exp(_upsample(st, step, n) * (math.log(2.0) / 12.0)), 50.0, 700.0)
    f0 *= 1.0 - 0.45 * creak  # creak: F0 drops towards half
    voiced_weight = np.clip(voice_env - 0.3, 0.0, None)
    f0_mean = float((f0 * voiced_weight).sum() / max(float(voiced_weight.sum()), 1e-9))
    pulses, aspiration = _glottal_source(f0, voice_env, asp_env, creak, p, sample_rate, rng)
    frication = _white(rng, n) * fric_env

    # --- time-varying filters, frame by frame in the frequency domain ---
    n_win, hop, n_fft = _stft_params(sample_rate)
    P, A, F = (_analyse(x, n_win, hop, n_fft) for x in (pulses, aspiration, frication))
    frame_t = (np.arange(P.shape[0]) * hop + n_win / 2 - n_win) / sample_rate
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    formants = np.stack([_interp_anchors(frame_t, [(a, f[j]) for a, f in tr.formants]) for j in range(5)], axis=1)
    nasal = _interp_anchors(frame_t, tr.nasal)[:, None]
    bandwidths = _BASE_BANDWIDTHS * p.bandwidth_scale * np.ones_like(formants)
    bandwidths[:, 0] *= 1.0 + p.breathiness + nasal[:, 0]  # glottal leakage / nasal coupling damp F1
    vocal_tract = _formant_response(formants, bandwidths, n_fft, sample_rate)
    vocal_tract *= ((1.0 - nasal) + nasal / np.sqrt(1.0 + (freqs / 400.0) ** 2)).astype(np.float32)  # nasal murmur
    vocal_tract *= _antiresonance(speaker.fossa_zero_hz * speaker.vtl_factor, 250.0, freqs, sample_rate)
    tilt = (10.0 ** (p.tilt_db_per_oct / 20.0 * np.log2(np.maximum(freqs, 300.0) / 1000.0))).astype(np.float32)
    spectrum = (P * tilt + A) * vocal_tract
    if tr.noise_bands:
        spectrum += F * _noise_bands(spectrum, tr, frame_t, freqs, p, n_win, sample_rate)
    y = _synthesise(spectrum, n, n_win, hop, n_fft)

    # --- level: speaker habit + emotion, measured on the active part; limiter; recording noise floor ---
    active = (voice_env > 0.5) | (fric_env > 0.3)
    if not active.any():
        active = np.ones(n, dtype=bool)
    y *= 10.0 ** ((-28.0 + p.energy_db) / 20.0) / max(float(np.sqrt(np.mean(y[active] ** 2))), 1e-12)
    y += _white(rng, n) * np.float32(10.0 ** (-70.0 / 20.0))
    peak = float(np.abs(y).max())
    if peak > 0.98:
        y *= 0.98 / peak
    info = {
        "f0_mean": f0_mean,
        "intensity": intensity,
        "syllables": len(tr.vowels),
        "syllable_rate": p.syllable_rate,
        "rms_dbfs": 20.0 * math.log10(max(float(np.sqrt(np.mean(y[active] ** 2))), 1e-9)),
    }
    return y.astype(np.float32), info


def _noise_bands(voiced_spectrum: np.ndarray, tr: _Tracks, frame_t: np.ndarray, freqs: np.ndarray, p: _ClipParams,
                 n_win: int, sample_rate: int) -> np.ndarray:
    """Per-frame frication/burst spectral shape; a full-level fricative sits 6 dB below the vowels, moved by
    the emotion's articulation effort.

    The vowel level is measured on the voiced frames' spectra (Parseval), so voiced and noise paths share one
    inverse FFT.
    """
    frame_energy = (np.abs(voiced_spectrum) ** 2).sum(axis=1)
    vowel_frames = _interp_anchors(frame_t, tr.voice) > 0.7
    vowel_energy = float(frame_energy[vowel_frames].mean() if vowel_frames.any() else frame_energy.mean())
    mids = np.array([b[0] for b in tr.noise_bands])
    nearest = np.abs(frame_t[:, None] - mids[None, :]).argmin(axis=1)
    scale = float(np.mean(p.formant_scale[1:3]))  # front-cavity resonances scale with the tract too
    centre = np.minimum(np.array([b[1] for b in tr.noise_bands])[nearest] * scale, 0.42 * sample_rate)
    width = np.array([b[2] for b in tr.noise_bands])[nearest] * scale
    band = np.exp(-0.5 * ((freqs[None, :] - centre[:, None]) / width[:, None]) ** 2) + 0.03
    # White noise through a Hann frame has expected bin power sum(w^2) = 0.375 * n_win; normalise to unit gain.
    band *= math.sqrt(vowel_energy / (n_win * 0.375 * freqs.size)) * 10.0 ** ((-6.0 + p.articulation_db) / 20.0) / np.sqrt(
        np.mean(band ** 2, axis=1, keepdims=True))
    return band.astype(np.float32)
