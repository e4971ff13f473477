"""Physics model of the simulated Xspress3: spectra, dead time and scalers.

Pure numpy. Three parts:

* an X-ray emission line table (:data:`ELEMENT_LINES`) with absorption edges, so a
  line is only emitted when the incident energy is above its edge;
* a silicon-detector response (:func:`fwhm_ev`) and a sample model
  (:class:`SampleModel`) that turns line families, elastic and Compton scatter and
  a background into the probability of a detected event landing in each bin;
* a dead-time model (:class:`ProcessorModel`, :func:`simulate_frame`) that draws
  one frame of spectra and the scalers the real device streams
  (``all_events``, ``all_good``, ``clock_ticks``, ``total_ticks``,
  ``reset_ticks``, ``event_width``, ``dead_time_correction``,
  ``output_count_rate``).

Bin convention: bin ``i`` covers ``[offset + i*cal, offset + (i+1)*cal)`` eV and its
centre is ``offset + (i + 0.5)*cal`` (see :func:`bin_of_energy` and
:func:`energy_of_bin`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, cast, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CLOCK_HZ",
    "DEFAULT_PROCESSOR",
    "DEFAULT_SAMPLE",
    "ELECTRONIC_NOISE_FWHM_EV",
    "ELEMENT_LINES",
    "FANO_FACTOR",
    "PAIR_ENERGY_EV",
    "READOUT_TIME_S",
    "EmissionLine",
    "PreparedShape",
    "ProcessorModel",
    "SampleModel",
    "SimulatedFrame",
    "bin_of_energy",
    "clock_ticks_for_exposure",
    "compton_energy_ev",
    "energy_of_bin",
    "excited_lines",
    "expected_dead_fraction",
    "expected_event_rate",
    "fwhm_ev",
    "prepare_shape",
    "simulate_frame",
]

CLOCK_HZ: Final = 80e6
"""Xspress3 / Xspress3 Mini processing clock (1 tick = 12.5 ns)."""

READOUT_TIME_S: Final = 25e-9
"""Fixed readout time the device subtracts from every frame."""

_UINT32_MAX: Final = 2**32 - 1
_INT32_MAX: Final = 2**31 - 1

# ---------------------------------------------------------------------------
# Emission lines
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmissionLine:
    """One fluorescence line.

    ``relative_intensity`` is relative to the strongest line of the family (100);
    ``edge_ev`` is the absorption edge that must be exceeded to emit the line.
    """

    element: str
    name: str
    energy_ev: float
    relative_intensity: float
    edge_ev: float


# K family: Ka1, Ka2, Kb1 energies, K edge, Kb1 intensity (Ka1 = 100, Ka2 = 50).
# Values from the X-ray Data Booklet tables (eV).
_K_TABLE: Final[dict[str, tuple[float, float, float, float, float]]] = {
    "Ar": (2957.70, 2955.63, 3190.5, 3205.9, 10.0),
    "K": (3313.8, 3311.1, 3589.6, 3608.4, 11.0),
    "Ca": (3691.68, 3688.09, 4012.7, 4038.5, 13.0),
    "Sc": (4090.6, 4086.1, 4460.5, 4492.0, 15.0),
    "Ti": (4510.84, 4504.86, 4931.81, 4966.0, 15.0),
    "V": (4952.20, 4944.64, 5427.29, 5465.0, 15.0),
    "Cr": (5414.72, 5405.51, 5946.71, 5989.0, 15.0),
    "Mn": (5898.75, 5887.65, 6490.45, 6539.0, 17.0),
    "Fe": (6403.84, 6390.84, 7057.98, 7112.0, 17.0),
    "Co": (6930.32, 6915.30, 7649.43, 7709.0, 17.0),
    "Ni": (7478.15, 7460.89, 8264.66, 8333.0, 17.0),
    "Cu": (8047.78, 8027.83, 8905.29, 8979.0, 17.0),
    "Zn": (8638.86, 8615.78, 9572.0, 9659.0, 17.0),
    "Ga": (9251.74, 9224.82, 10264.2, 10367.0, 18.0),
    "Ge": (9886.42, 9855.32, 10982.1, 11103.0, 19.0),
    "As": (10543.72, 10507.99, 11726.2, 11867.0, 19.0),
    "Se": (11222.4, 11181.4, 12495.9, 12658.0, 20.0),
    "Br": (11924.2, 11877.6, 13291.4, 13474.0, 20.0),
}

# L family: La1, La2, Lb1, Lb2, Lg1, Ll energies, then the L3 and L2 edges.
# La1, La2, Lb2 and Ll fill L3 vacancies; Lb1 and Lg1 fill L2 vacancies.
_L_TABLE: Final[
    dict[str, tuple[float, float, float, float, float, float, float, float]]
] = {
    "W": (8397.6, 8335.2, 9672.35, 9961.5, 11285.9, 7387.8, 10207.0, 11544.0),
    "Pt": (9442.3, 9361.8, 11070.7, 11250.5, 12942.0, 8268.0, 11564.0, 13273.0),
    "Au": (9713.3, 9628.0, 11442.3, 11584.7, 13381.7, 8494.0, 11919.0, 13734.0),
    "Hg": (9988.8, 9897.6, 11822.6, 11924.1, 13830.1, 8721.0, 12284.0, 14209.0),
    "Pb": (10551.5, 10449.5, 12613.7, 12622.6, 14764.4, 9184.5, 13035.0, 15200.0),
    "Bi": (10838.8, 10730.9, 13023.5, 12979.9, 15247.7, 9420.4, 13419.0, 15711.0),
}
# Approximate relative intensities of La1, La2, Lb1, Lb2, Lg1, Ll.
_L_INTENSITY: Final = (100.0, 11.0, 67.0, 22.0, 13.0, 5.0)


def _build_lines() -> Mapping[str, tuple[EmissionLine, ...]]:
    table: dict[str, tuple[EmissionLine, ...]] = {}
    for el, (ka1, ka2, kb1, edge, kb_rel) in _K_TABLE.items():
        table[el] = (
            EmissionLine(el, "Ka1", ka1, 100.0, edge),
            EmissionLine(el, "Ka2", ka2, 50.0, edge),
            EmissionLine(el, "Kb1", kb1, kb_rel, edge),
        )
    for el, (la1, la2, lb1, lb2, lg1, ll, l3, l2) in _L_TABLE.items():
        i_la1, i_la2, i_lb1, i_lb2, i_lg1, i_ll = _L_INTENSITY
        table[el] = (
            EmissionLine(el, "La1", la1, i_la1, l3),
            EmissionLine(el, "La2", la2, i_la2, l3),
            EmissionLine(el, "Lb1", lb1, i_lb1, l2),
            EmissionLine(el, "Lb2", lb2, i_lb2, l3),
            EmissionLine(el, "Lg1", lg1, i_lg1, l2),
            EmissionLine(el, "Ll", ll, i_ll, l3),
        )
    return MappingProxyType(table)


ELEMENT_LINES: Final[Mapping[str, tuple[EmissionLine, ...]]] = _build_lines()
"""Element symbol -> its emission lines (K family up to Br, L family for W-Bi)."""


def excited_lines(element: str, incident_energy_ev: float) -> tuple[EmissionLine, ...]:
    """Lines of ``element`` whose edge lies below ``incident_energy_ev``."""
    try:
        lines = ELEMENT_LINES[element]
    except KeyError:
        known = ", ".join(sorted(ELEMENT_LINES))
        raise ValueError(f"unknown element {element!r}; known: {known}") from None
    return tuple(line for line in lines if line.edge_ev < incident_energy_ev)


# ---------------------------------------------------------------------------
# Detector response and energy axis
# ---------------------------------------------------------------------------

FANO_FACTOR: Final = 0.115
"""Fano factor of silicon."""

PAIR_ENERGY_EV: Final = 3.66
"""Mean energy per electron-hole pair in silicon (eV)."""

ELECTRONIC_NOISE_FWHM_EV: Final = 70.0
"""Electronic noise (FWHM, eV); gives FWHM = 136.6 eV at Mn Ka1."""

_FWHM_PER_SIGMA: Final = 2.3548200450309493  # 2 * sqrt(2 ln 2)
_ELECTRON_REST_EV: Final = 510998.95
_SI_KA_EV: Final = 1739.98
_SI_K_EDGE_EV: Final = 1838.9
_ESCAPE_FRACTION: Final = 0.005  # Si Ka escape peak, fraction of the parent line
_COMPTON_REL_SIGMA: Final = 0.012  # Doppler + solid angle broadening of Compton
_ELASTIC_SHARE: Final = 0.35  # elastic share of the scattered counts
_THRESHOLD_EV: Final = 500.0  # energy threshold of the background continuum
_BG_DECAY_EV: Final = 3000.0  # decay length of the background's exponential part
_BG_FLAT: Final = 0.3  # flat part of the background relative to its exp. part
_GAUSS_CUT: Final = 8.0  # Gaussians are truncated at this many sigma


@overload
def fwhm_ev(
    energy_ev: float,
    noise_fwhm_ev: float = ...,
    fano: float = ...,
    pair_energy_ev: float = ...,
) -> float: ...
@overload
def fwhm_ev(
    energy_ev: NDArray[np.floating],
    noise_fwhm_ev: float = ...,
    fano: float = ...,
    pair_energy_ev: float = ...,
) -> NDArray[np.float64]: ...
def fwhm_ev(
    energy_ev: float | NDArray[np.floating],
    noise_fwhm_ev: float = ELECTRONIC_NOISE_FWHM_EV,
    fano: float = FANO_FACTOR,
    pair_energy_ev: float = PAIR_ENERGY_EV,
) -> float | NDArray[np.float64]:
    """Energy resolution (FWHM, eV) of a silicon detector at ``energy_ev``.

    ``sqrt(noise^2 + 2.3548^2 * fano * pair_energy * E)``.
    """
    k = _FWHM_PER_SIGMA**2 * fano * pair_energy_ev
    if isinstance(energy_ev, np.ndarray):
        e = np.maximum(energy_ev.astype(np.float64), 0.0)
        return np.sqrt(noise_fwhm_ev**2 + k * e)
    return math.sqrt(noise_fwhm_ev**2 + k * max(float(energy_ev), 0.0))


def compton_energy_ev(incident_energy_ev: float, angle_deg: float = 90.0) -> float:
    """Energy of a photon Compton-scattered by ``angle_deg`` (free electron)."""
    one_minus_cos = 1.0 - math.cos(math.radians(angle_deg))
    return incident_energy_ev / (
        1.0 + incident_energy_ev / _ELECTRON_REST_EV * one_minus_cos
    )


def bin_of_energy(
    energy_ev: float, calibration: float = 10.0, offset: float = 0.0
) -> int:
    """Index of the bin containing ``energy_ev``: ``floor((E - offset) / cal)``.

    Bin ``i`` covers ``[offset + i*cal, offset + (i+1)*cal)``. Not clipped to the
    number of bins: the result can be negative or past the last bin.
    """
    return math.floor((energy_ev - offset) / calibration)


def energy_of_bin(
    bin_index: int, calibration: float = 10.0, offset: float = 0.0
) -> float:
    """Centre energy (eV) of bin ``bin_index``: ``offset + (i + 0.5) * cal``."""
    return offset + (bin_index + 0.5) * calibration


def _erf(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.asarray(np.vectorize(math.erf, otypes=[np.float64])(x), np.float64)


def _add_gaussian(
    out: NDArray[np.float64],
    edges: NDArray[np.float64],
    centre: float,
    sigma: float,
    weight: float,
) -> None:
    """Add ``weight`` times the probability of N(centre, sigma) in each bin."""
    lo = int(np.searchsorted(edges, centre - _GAUSS_CUT * sigma, side="right")) - 1
    hi = int(np.searchsorted(edges, centre + _GAUSS_CUT * sigma, side="left"))
    lo = max(lo, 0)
    hi = min(hi, out.size)
    if hi <= lo:
        return
    z = (edges[lo : hi + 1] - centre) / (sigma * math.sqrt(2.0))
    cdf = _erf(z)
    out[lo:hi] += weight * 0.5 * np.diff(cdf)


def _normalised(a: NDArray[np.float64]) -> NDArray[np.float64] | None:
    s = float(a.sum())
    if s <= 0.0:
        return None
    return a / s


# ---------------------------------------------------------------------------
# Prepared shapes (what simulate_frame consumes)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, slots=True)
class PreparedShape:
    """A spectrum shape pre-processed for :func:`simulate_frame`.

    ``pdf`` is ``(rows, bins)`` with ``rows`` 1 (shared by all channels) or the
    number of channels; each row sums to 1. ``lo:hi`` is the bin range holding
    every non-zero probability; ``support`` is ``pdf[:, lo:hi]`` and ``cdf`` its
    cumulative sum with the last non-zero bin forced to exactly 1.
    """

    pdf: NDArray[np.float64]
    lo: int
    hi: int
    support: NDArray[np.float64]
    cdf: NDArray[np.float64]

    @property
    def bins(self) -> int:
        """Number of bins of the spectrum."""
        return int(self.pdf.shape[1])

    @property
    def rows(self) -> int:
        """1 for a shape shared by all channels, else the number of channels."""
        return int(self.pdf.shape[0])


def prepare_shape(shape_pdf: ArrayLike) -> PreparedShape:
    """Normalise a ``(bins,)`` or ``(channels, bins)`` shape and precompute tables."""
    pdf = np.array(shape_pdf, dtype=np.float64, copy=True, ndmin=2)
    if pdf.ndim != 2 or pdf.shape[1] == 0 or pdf.shape[0] == 0:
        raise ValueError(
            f"shape_pdf must be (bins,) or (channels, bins), got {pdf.shape}"
        )
    if not np.all(np.isfinite(pdf)) or np.any(pdf < 0.0):
        raise ValueError("shape_pdf must be finite and non-negative")
    sums = pdf.sum(axis=1, keepdims=True)
    if np.any(sums <= 0.0):
        raise ValueError("every row of shape_pdf must have a positive sum")
    pdf /= sums
    nz = np.flatnonzero(pdf.any(axis=0))
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    support = np.ascontiguousarray(pdf[:, lo:hi])
    cdf = np.cumsum(support, axis=1)
    for r in range(support.shape[0]):
        last = int(np.flatnonzero(support[r])[-1])
        cdf[r, last:] = 1.0
    for a in (pdf, support, cdf):
        a.setflags(write=False)
    return PreparedShape(pdf=pdf, lo=lo, hi=hi, support=support, cdf=cdf)


# Identity cache for read-only arrays handed to simulate_frame repeatedly.
_PREPARED_CACHE: list[tuple[object, PreparedShape]] = []
_PREPARED_CACHE_SIZE: Final = 8


def _is_frozen(arr: object) -> bool:
    """True if ``arr`` and every array it views are read-only (safe to cache)."""
    while arr is not None:
        if isinstance(arr, np.ndarray):
            if arr.flags.writeable:
                return False
            arr = cast("NDArray[np.generic]", arr).base
        else:
            return isinstance(arr, bytes)
    return True


def _prepared(shape_pdf: ArrayLike | PreparedShape) -> PreparedShape:
    if isinstance(shape_pdf, PreparedShape):
        return shape_pdf
    if not isinstance(shape_pdf, np.ndarray):
        return prepare_shape(shape_pdf)
    arr = cast("NDArray[np.generic]", shape_pdf)
    if not _is_frozen(arr):
        return prepare_shape(arr)
    for cached, prep in _PREPARED_CACHE:
        if cached is arr:
            return prep
    prep = prepare_shape(arr)
    _PREPARED_CACHE.append((arr, prep))
    if len(_PREPARED_CACHE) > _PREPARED_CACHE_SIZE:
        del _PREPARED_CACHE[0]
    return prep


# ---------------------------------------------------------------------------
# Sample model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleModel:
    """A sample seen by the detector, as the shape of its detected spectrum.

    ``elements`` maps an element of :data:`ELEMENT_LINES` to the weight of its line
    family; only lines whose edge is below ``incident_energy_ev`` are emitted, each
    with weight ``family_weight * relative_intensity / family_total``. Of the
    detected events, ``scatter_fraction`` are elastic + Compton (90 degrees)
    scatter, ``background_fraction`` a flat + exponentially decaying continuum
    from 500 eV up to the incident energy, the rest fluorescence (a component
    with nothing in range is dropped and the rest renormalised). Lines and the
    elastic peak above the Si K edge get a 0.5 % Si escape peak.

    Immutable; ``expected_shape()`` and ``prepared()`` are computed once and cached.
    """

    elements: Mapping[str, float]
    incident_energy_ev: float = 12000.0
    scatter_fraction: float = 0.15
    background_fraction: float = 0.10
    calibration_ev_per_bin: float = 10.0
    offset_ev: float = 0.0
    bins: int = 4096
    _shape: NDArray[np.float64] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _prep: PreparedShape | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        elements = MappingProxyType(
            {str(k): float(v) for k, v in dict(self.elements).items()}
        )
        object.__setattr__(self, "elements", elements)
        for el, w in elements.items():
            if el not in ELEMENT_LINES:
                known = ", ".join(sorted(ELEMENT_LINES))
                raise ValueError(f"unknown element {el!r}; known: {known}")
            if not (math.isfinite(w) and w >= 0.0):
                raise ValueError(f"weight of {el} must be finite and >= 0, got {w}")
        if not (math.isfinite(self.incident_energy_ev) and self.incident_energy_ev > 0):
            raise ValueError("incident_energy_ev must be > 0")
        for name in ("scatter_fraction", "background_fraction"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.scatter_fraction + self.background_fraction > 1.0:
            raise ValueError("scatter_fraction + background_fraction must be <= 1")
        if not (self.calibration_ev_per_bin > 0 and math.isfinite(self.offset_ev)):
            raise ValueError("calibration_ev_per_bin must be > 0, offset_ev finite")
        if self.bins < 1:
            raise ValueError("bins must be >= 1")

    def __hash__(self) -> int:
        return hash(
            (
                tuple(sorted(self.elements.items())),
                self.incident_energy_ev,
                self.scatter_fraction,
                self.background_fraction,
                self.calibration_ev_per_bin,
                self.offset_ev,
                self.bins,
            )
        )

    def bin_edges(self) -> NDArray[np.float64]:
        """The ``bins + 1`` bin edges in eV."""
        return self.offset_ev + self.calibration_ev_per_bin * np.arange(
            self.bins + 1, dtype=np.float64
        )

    def bin_centres(self) -> NDArray[np.float64]:
        """The ``bins`` bin centres in eV."""
        return self.offset_ev + self.calibration_ev_per_bin * (
            np.arange(self.bins, dtype=np.float64) + 0.5
        )

    def expected_shape(self) -> NDArray[np.float64]:
        """Probability that a detected event lands in each bin (sums to 1).

        Read-only float64 array of length ``bins``, cached.
        """
        if self._shape is None:
            shape = self._compute_shape()
            shape.setflags(write=False)
            object.__setattr__(self, "_shape", shape)
            return shape
        return self._shape

    def prepared(self) -> PreparedShape:
        """:func:`prepare_shape` of :meth:`expected_shape`, cached."""
        if self._prep is None:
            prep = prepare_shape(self.expected_shape())
            object.__setattr__(self, "_prep", prep)
            return prep
        return self._prep

    def _peak(
        self, out: NDArray[np.float64], edges: NDArray[np.float64], e: float, w: float
    ) -> None:
        """A detector-resolution peak at ``e`` plus its Si escape peak."""
        sigma = fwhm_ev(e) / _FWHM_PER_SIGMA
        main = w
        if e > _SI_K_EDGE_EV:
            esc = e - _SI_KA_EV
            _add_gaussian(
                out, edges, esc, fwhm_ev(esc) / _FWHM_PER_SIGMA, w * _ESCAPE_FRACTION
            )
            main = w * (1.0 - _ESCAPE_FRACTION)
        _add_gaussian(out, edges, e, sigma, main)

    def _compute_shape(self) -> NDArray[np.float64]:
        edges = self.bin_edges()
        centres = self.bin_centres()
        e0 = self.incident_energy_ev

        fluo = np.zeros(self.bins)
        for el, weight in self.elements.items():
            family = ELEMENT_LINES[el]
            total = sum(line.relative_intensity for line in family)
            for line in excited_lines(el, e0):
                w = weight * line.relative_intensity / total
                if w > 0.0:
                    self._peak(fluo, edges, line.energy_ev, w)

        scatter = np.zeros(self.bins)
        self._peak(scatter, edges, e0, _ELASTIC_SHARE)
        ec = compton_energy_ev(e0, 90.0)
        sigma_c = math.hypot(fwhm_ev(ec) / _FWHM_PER_SIGMA, _COMPTON_REL_SIGMA * ec)
        _add_gaussian(scatter, edges, ec, sigma_c, 1.0 - _ELASTIC_SHARE)

        # Continuum: flat + exponential, switched on at the threshold and rolled
        # off at the incident energy with the detector resolution there.
        sigma0 = fwhm_ev(e0) / _FWHM_PER_SIGMA
        cut = e0 + _GAUSS_CUT * sigma0
        background = np.zeros(self.bins)
        sel = (centres >= _THRESHOLD_EV) & (centres < cut)
        if np.any(sel):
            ec_sel = centres[sel]
            level = _BG_FLAT + np.exp(-(ec_sel - _THRESHOLD_EV) / _BG_DECAY_EV)
            roll_off = 0.5 * (1.0 - _erf((ec_sel - e0) / (sigma0 * math.sqrt(2.0))))
            background[sel] = level * roll_off

        fractions = (
            1.0 - self.scatter_fraction - self.background_fraction,
            self.scatter_fraction,
            self.background_fraction,
        )
        shape = np.zeros(self.bins)
        used = 0.0
        for frac, comp in zip(fractions, (fluo, scatter, background), strict=True):
            norm = _normalised(comp)
            if frac > 0.0 and norm is not None:
                shape += frac * norm
                used += frac
        if used <= 0.0:
            raise ValueError(
                "sample gives no counts in range: no excited lines and no "
                "scatter/background in the binned energy range"
            )
        return shape / shape.sum()


DEFAULT_SAMPLE: Final = SampleModel(
    elements={
        "Ar": 0.15,
        "Ca": 0.6,
        "Mn": 0.3,
        "Fe": 2.0,
        "Cu": 0.8,
        "Zn": 1.0,
        "Au": 0.4,
        "Pb": 0.5,  # L3 edge 13035 eV: silent at 12 keV, shows above 13.04 keV
    },
    incident_energy_ev=12000.0,
    scatter_fraction=0.15,
    background_fraction=0.10,
)
"""A typical XRF sample at 12 keV: Ar (air), Ca, Mn, Fe, Cu, Zn K and Au L lines."""


# ---------------------------------------------------------------------------
# Dead time and scalers
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessorModel:
    """Pulse-processor behaviour behind the scalers.

    * every detected event is dead for ``event_width + 1`` ticks;
    * preamplifier resets happen ``resets_per_event`` times per detected event
      (charge filling the ramp) plus ``leakage_resets_hz`` per second, each lasting
      ``reset_length_ticks`` (+1 with probability ``reset_jitter_probability``);
    * of the detected events, a fraction
      ``1 - (1 - baseline_reject_fraction) * exp(-icr * pileup_window_s)`` is
      rejected (pile-up, noise) and never reaches the spectrum.

    Defaults follow the real captures (event width 6, resets of 90-91 ticks, one
    leakage reset every ~0.1 s) and give ~32 % dead time at 1e6 cps.
    """

    reset_length_ticks: int = 90
    resets_per_event: float = 0.35
    leakage_resets_hz: float = 10.0
    reset_jitter_probability: float = 0.5
    pileup_window_s: float = 20e-9
    baseline_reject_fraction: float = 0.002

    def __post_init__(self) -> None:
        if int(self.reset_length_ticks) != self.reset_length_ticks:
            raise ValueError("reset_length_ticks must be an integer")
        if self.reset_length_ticks < 0 or self.resets_per_event < 0:
            raise ValueError("reset_length_ticks and resets_per_event must be >= 0")
        if self.leakage_resets_hz < 0 or self.pileup_window_s < 0:
            raise ValueError("leakage_resets_hz and pileup_window_s must be >= 0")
        if not (0.0 <= self.reset_jitter_probability <= 1.0):
            raise ValueError("reset_jitter_probability must be in [0, 1]")
        if not (0.0 <= self.baseline_reject_fraction <= 1.0):
            raise ValueError("baseline_reject_fraction must be in [0, 1]")

    def mean_reset_ticks(self) -> float:
        """Mean length of one reset in ticks."""
        return self.reset_length_ticks + self.reset_jitter_probability

    def dead_ticks_per_event(self, event_width: ArrayLike) -> NDArray[np.float64]:
        """Mean dead ticks per detected event: event width + 1 + its reset share."""
        ew = np.asarray(event_width, dtype=np.float64)
        return ew + 1.0 + self.resets_per_event * self.mean_reset_ticks()

    def good_fraction(self, true_icr: ArrayLike) -> NDArray[np.float64]:
        """Fraction of detected events that are good (reach the spectrum)."""
        icr = np.asarray(true_icr, dtype=np.float64)
        return (1.0 - self.baseline_reject_fraction) * np.exp(
            -icr * self.pileup_window_s
        )


DEFAULT_PROCESSOR: Final = ProcessorModel()


def expected_event_rate(
    true_icr: ArrayLike,
    event_width: ArrayLike = 6,
    processor: ProcessorModel = DEFAULT_PROCESSOR,
    clock_hz: float = CLOCK_HZ,
) -> NDArray[np.float64]:
    """Mean rate of detected events (``all_events`` per second of real time).

    Non-paralysable: ``icr * (1 - leak) / (1 + icr * tau)`` with ``tau`` the dead
    time per event in seconds and ``leak`` the dead fraction of leakage resets.
    """
    icr = np.asarray(true_icr, dtype=np.float64)
    tau = processor.dead_ticks_per_event(event_width) / clock_hz
    leak = min(
        processor.leakage_resets_hz * processor.mean_reset_ticks() / clock_hz, 1.0
    )
    return icr * (1.0 - leak) / (1.0 + icr * tau)


def expected_dead_fraction(
    true_icr: ArrayLike,
    event_width: ArrayLike = 6,
    processor: ProcessorModel = DEFAULT_PROCESSOR,
    clock_hz: float = CLOCK_HZ,
) -> NDArray[np.float64]:
    """Mean ``dead_ticks / clock_ticks`` for a true input rate (0..1)."""
    tau_ticks = processor.dead_ticks_per_event(event_width)
    rate = expected_event_rate(true_icr, event_width, processor, clock_hz)
    leak = min(
        processor.leakage_resets_hz * processor.mean_reset_ticks() / clock_hz, 1.0
    )
    return rate * tau_ticks / clock_hz + leak


def clock_ticks_for_exposure(
    exposure_time_s: float,
    latency_time_s: float,
    readout_s: float = READOUT_TIME_S,
    clock_hz: float = CLOCK_HZ,
) -> tuple[float, int]:
    """Frame time and clock ticks the device uses for one frame.

    ``exptime = ExposureTime - LatencyTime - readout`` (as the device computes it,
    unrounded) and ``ticks = int(exptime * clock_hz)``. The product is rounded to
    6 decimals before truncation so float noise cannot lose a tick:
    0.1 s with 100 ns latency gives (0.099999875, 7999990).
    """
    exptime = exposure_time_s - latency_time_s - readout_s
    if not math.isfinite(exptime) or exptime <= 0.0:
        raise ValueError(
            f"exposure {exposure_time_s} s - latency {latency_time_s} s - readout "
            f"{readout_s} s leaves no time"
        )
    ticks = int(round(exptime * clock_hz, 6))
    if ticks > _UINT32_MAX:
        raise ValueError(f"{ticks} clock ticks do not fit the 32-bit counter")
    return exptime, ticks


@dataclass(frozen=True, eq=False, slots=True)
class SimulatedFrame:
    """One simulated frame: spectra and the per-channel scalers of the stream.

    Scalers are ``(channels,)`` arrays with the stream's dtypes. Invariants:
    ``spectra.sum(axis=1) == all_good <= all_events``, ``total_ticks ==
    clock_ticks`` and ``dead = all_events * (event_width + 1) + reset_ticks <
    clock_ticks`` (for ``clock_ticks >= 1``).

    ``output_count_rate`` deliberately reproduces the REAL DEVICE'S UNITS BUG:
    it is ``all_good / (total_ticks * clock_hz)``, not a rate in counts/s
    (6.4e15 too small at 80 MHz). The true OCR is ``all_good / real_time``.
    """

    spectra: NDArray[np.uint32]
    all_events: NDArray[np.uint32]
    all_good: NDArray[np.uint32]
    clock_ticks: NDArray[np.uint32]
    total_ticks: NDArray[np.uint32]
    reset_ticks: NDArray[np.uint32]
    event_width: NDArray[np.int32]
    dead_time_correction: NDArray[np.float64]
    output_count_rate: NDArray[np.float64]

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.spectra.shape[0])

    def window_counts(self, windows: ArrayLike) -> NDArray[np.uint32]:
        """Counts in inclusive ``[lo, hi]`` bin windows, shape ``(windows, channels)``.

        ``windows`` is ``(n, 2)`` (same window for every channel) or
        ``(n, channels, 2)`` (the header ``limits`` layout). Bounds are clipped to
        the spectrum; an empty window (``hi < lo``) counts 0. Raw, not corrected.
        """
        w = np.asarray(windows, dtype=np.int64)
        nchan, nbins = self.spectra.shape
        if w.ndim == 2 and w.shape[1] == 2:
            w = np.broadcast_to(w[:, None, :], (w.shape[0], nchan, 2))
        if w.ndim != 3 or w.shape[1:] != (nchan, 2):
            raise ValueError(
                f"windows must be (n, 2) or (n, {nchan}, 2), got {w.shape}"
            )
        lo = np.clip(w[..., 0], 0, nbins)
        hi = np.clip(w[..., 1] + 1, 0, nbins)
        hi = np.maximum(hi, lo)
        cs = np.zeros((nchan, nbins + 1), dtype=np.uint64)
        np.cumsum(self.spectra, axis=1, dtype=np.uint64, out=cs[:, 1:])
        ch = np.arange(nchan, dtype=np.intp).reshape(1, nchan)
        return (cs[ch, hi] - cs[ch, lo]).astype(np.uint32)

    def scaler_list(
        self, windows: ArrayLike | None = None
    ) -> list[NDArray[np.generic]]:
        """The scalers in the stream's pickle order.

        ``output_count_rate, all_events, all_good, clock_ticks, total_ticks,
        reset_ticks, event_width, dead_time_correction`` and, when ``windows`` is
        given, ``window_counts`` (new firmware).
        """
        out: list[NDArray[np.generic]] = [
            self.output_count_rate,
            self.all_events,
            self.all_good,
            self.clock_ticks,
            self.total_ticks,
            self.reset_ticks,
            self.event_width,
            self.dead_time_correction,
        ]
        if windows is not None:
            out.append(self.window_counts(windows))
        return out


# Below this many expected counts per support bin, placing events one by one
# (inverse CDF) is cheaper than one Poisson draw per bin. Both are exact.
_EVENT_SAMPLING_THRESHOLD: Final = 0.25


def _place_events(
    rng: np.random.Generator,
    prep: PreparedShape,
    n: NDArray[np.int64],
    spectra: NDArray[np.uint32],
) -> None:
    """Scatter ``n[c]`` events of channel ``c`` over the bins by the pdf."""
    nchan = n.shape[0]
    width = prep.hi - prep.lo
    total = int(n.sum())
    if total == 0:
        return
    u = rng.random(total)
    if prep.rows == 1:
        idx = np.searchsorted(prep.cdf[0], u, side="right")
        if nchan > 1:
            idx += np.repeat(np.arange(0, nchan * width, width, dtype=np.int64), n)
    else:
        idx = np.empty(total, dtype=np.int64)
        start = 0
        for c in range(nchan):
            stop = start + int(n[c])
            idx[start:stop] = np.searchsorted(prep.cdf[c], u[start:stop], side="right")
            idx[start:stop] += c * width
            start = stop
    counts = np.bincount(idx, minlength=nchan * width)
    spectra[:, prep.lo : prep.hi] = counts.reshape(nchan, width)


def _event_widths(event_width: ArrayLike, nchan: int) -> NDArray[np.int64]:
    if isinstance(event_width, int):
        if not 0 <= event_width < _INT32_MAX:
            raise ValueError("event_width must be in [0, 2**31 - 2]")
        return np.full(nchan, event_width, dtype=np.int64)
    raw = np.broadcast_to(np.asarray(event_width), (nchan,))
    ew = raw.astype(np.int64)
    if np.any(ew != raw) or ew.min() < 0 or ew.max() >= _INT32_MAX:
        raise ValueError("event_width must be integers in [0, 2**31 - 2]")
    return ew


def simulate_frame(
    rng: np.random.Generator,
    shape_pdf: ArrayLike | PreparedShape,
    true_icr: ArrayLike,
    clock_ticks: int,
    event_width: ArrayLike = 6,
    processor: ProcessorModel = DEFAULT_PROCESSOR,
    clock_hz: float = CLOCK_HZ,
) -> SimulatedFrame:
    """Draw one frame of spectra and scalers.

    Args:
        rng: random generator.
        shape_pdf: ``(bins,)`` shape shared by all channels or ``(channels, bins)``
            (normalised here), or a :class:`PreparedShape`. Passing the same
            read-only array again (e.g. ``SampleModel.expected_shape()``) reuses
            cached tables; ``SampleModel.prepared()`` is the cheapest.
        true_icr: ``(channels,)`` true input count rate per channel (counts/s).
        clock_ticks: frame length in clock ticks (0 .. 2**32-1).
        event_width: per-channel event width in ticks (scalar or ``(channels,)``).
        processor: dead-time, reset and rejection model.
        clock_hz: processing clock (80 MHz for Xspress3).

    Model: ``real_time = clock_ticks / clock_hz``. Detected events are Poisson
    with mean ``expected_event_rate(true_icr) * real_time`` (non-paralysable, dead
    time per event ``event_width + 1`` ticks plus the reset share); good events
    are the Poisson thinning by ``processor.good_fraction``; each bin of the
    spectrum is Poisson and ``all_good`` is the spectrum's sum exactly;
    ``all_events = all_good + rejected``; ``reset_ticks`` comes from a Poisson
    number of resets. If a fluctuation would make ``dead >= clock_ticks``, resets,
    then events, then spectrum counts are cut so ``dead < clock_ticks`` holds.
    ``dead_time_correction = clock_ticks / (clock_ticks - reset_ticks -
    all_events * (event_width + 1))`` in float64; ``output_count_rate`` keeps the
    device's units bug, ``all_good / (total_ticks * clock_hz)`` (see
    :class:`SimulatedFrame`). ``clock_ticks == 0`` gives an empty frame with NaN
    ``dead_time_correction`` and ``output_count_rate``.
    """
    prep = _prepared(shape_pdf)
    icr = np.asarray(true_icr, dtype=np.float64)
    if icr.ndim == 0:
        icr = icr.reshape(1)
    if icr.ndim != 1:
        raise ValueError(f"true_icr must be (channels,), got {icr.shape}")
    nchan = icr.shape[0]
    if prep.rows != 1 and prep.rows != nchan:
        raise ValueError(f"shape_pdf has {prep.rows} rows for {nchan} channels")
    if not (math.isfinite(float(icr.sum())) and icr.min() >= 0.0):
        raise ValueError("true_icr must be finite and >= 0")
    ew = _event_widths(event_width, nchan)
    ticks = int(clock_ticks)
    if ticks != clock_ticks or not 0 <= ticks <= _UINT32_MAX:
        raise ValueError(
            f"clock_ticks must be an integer in [0, 2**32-1], not {clock_ticks}"
        )
    if not clock_hz > 0:
        raise ValueError("clock_hz must be > 0")

    # Expected numbers (see expected_event_rate): events, good, rejected, resets.
    proc = processor
    real_time = ticks / clock_hz
    reset_len = proc.reset_length_ticks + proc.reset_jitter_probability
    leak = min(proc.leakage_resets_hz * reset_len / clock_hz, 1.0)
    tau_s = (ew + (1.0 + proc.resets_per_event * reset_len)) / clock_hz
    mean_events = icr * ((1.0 - leak) * real_time) / (1.0 + icr * tau_s)
    mean_good = mean_events * (
        (1.0 - proc.baseline_reject_fraction) * np.exp(-icr * proc.pileup_window_s)
    )
    means = np.concatenate(
        (
            mean_good,
            mean_events - mean_good,
            mean_events * proc.resets_per_event + proc.leakage_resets_hz * real_time,
        )
    )

    spectra = np.zeros((nchan, prep.bins), dtype=np.uint32)
    width = prep.hi - prep.lo
    if float(mean_good.sum()) < _EVENT_SAMPLING_THRESHOLD * nchan * width:
        draws = rng.poisson(means)
        all_good = draws[:nchan]
        _place_events(rng, prep, all_good, spectra)
    else:
        counts = rng.poisson(mean_good[:, None] * prep.support)
        spectra[:, prep.lo : prep.hi] = counts
        draws = rng.poisson(means)
        all_good = counts.sum(axis=1)
    all_events = all_good + draws[nchan : 2 * nchan]
    n_resets = draws[2 * nchan :]
    reset_ticks = n_resets * proc.reset_length_ticks
    if proc.reset_jitter_probability > 0.0:
        reset_ticks += rng.binomial(n_resets, proc.reset_jitter_probability)

    per_event = ew + 1
    if ticks > 0 and int((all_events * per_event + reset_ticks).max()) >= ticks:
        _clip_saturated(
            rng, spectra, all_good, all_events, reset_ticks, per_event, ticks
        )

    clock = np.full(nchan, ticks, dtype=np.uint32)
    ct = float(ticks)
    live = (
        ct - reset_ticks.astype(np.float64) - all_events * per_event.astype(np.float64)
    )
    good_f = all_good.astype(np.float64)
    if ticks > 0:
        dtc = ct / live
        # The device's units bug, reproduced on purpose: NOT counts per second.
        ocr = good_f / (ct * clock_hz)
    else:
        dtc = np.full(nchan, np.nan)
        ocr = np.full(nchan, np.nan)
    return SimulatedFrame(
        spectra=spectra,
        all_events=all_events.astype(np.uint32),
        all_good=all_good.astype(np.uint32),
        clock_ticks=clock,
        total_ticks=clock.copy(),
        reset_ticks=reset_ticks.astype(np.uint32),
        event_width=ew.astype(np.int32),
        dead_time_correction=dtc,
        output_count_rate=ocr,
    )


def _clip_saturated(
    rng: np.random.Generator,
    spectra: NDArray[np.uint32],
    all_good: NDArray[np.int64],
    all_events: NDArray[np.int64],
    reset_ticks: NDArray[np.int64],
    per_event: NDArray[np.int64],
    ticks: int,
) -> None:
    """Cut resets, events and spectrum counts in place so that dead < ticks."""
    np.minimum(reset_ticks, ticks - 1, out=reset_ticks)
    max_events = (ticks - 1 - reset_ticks) // per_event
    for c in np.flatnonzero(all_events > max_events):
        all_events[c] = max_events[c]
        surplus = int(all_good[c] - all_events[c])
        if surplus > 0:
            row = spectra[c].astype(np.int64)
            removed = rng.multivariate_hypergeometric(row, surplus)
            spectra[c] = row - removed
            all_good[c] = all_events[c]
