"""Shape of the simulated spectrum: where a detected event lands, bin by bin.

Pure numpy. A silicon-detector response (:func:`fwhm_ev`) and a sample model
(:class:`SampleModel`) turn the emission lines of :mod:`._lines` (each only
when the incident energy is above its edge), elastic and Compton scatter and a
background into the probability of a detected event landing in each bin;
:func:`prepare_shape` turns that into the tables :mod:`._processor` samples
events from. Bins follow :class:`~ophyd_xspress.protocol.Calibration` (bin
``i`` covers ``[offset + i*cal, offset + (i+1)*cal)`` eV).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol, cast, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._constants import DEFAULT_BINS
from ..protocol import Calibration
from ._lines import emission_line, excited_lines, lines_of

__all__ = [
    "DEFAULT_SAMPLE",
    "ELECTRONIC_NOISE_FWHM_EV",
    "FANO_FACTOR",
    "PAIR_ENERGY_EV",
    "PreparedShape",
    "SampleModel",
    "as_prepared",
    "compton_energy_ev",
    "fwhm_ev",
    "line_window",
    "prepare_shape",
]

# ---------------------------------------------------------------------------
# Detector response
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


def as_prepared(shape_pdf: ArrayLike | PreparedShape) -> PreparedShape:
    """``shape_pdf`` as a :class:`PreparedShape`, cached for a read-only array."""
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
    bins: int = DEFAULT_BINS
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
            lines_of(el)  # raises for an element the table does not know
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

    @property
    def calibration(self) -> Calibration:
        """The energy calibration of the bins."""
        return Calibration(self.calibration_ev_per_bin, self.offset_ev)

    def bin_edges(self) -> NDArray[np.float64]:
        """The ``bins + 1`` bin edges in eV."""
        return self.calibration.edges(self.bins)

    def bin_centres(self) -> NDArray[np.float64]:
        """The ``bins`` bin centres in eV."""
        return self.calibration.centres(self.bins)

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
            family = lines_of(el)
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


class Binned(Protocol):
    """A sample's binning: :class:`SampleModel` and ``SampleMap`` have it."""

    @property
    def calibration(self) -> Calibration: ...

    @property
    def bins(self) -> int: ...


def line_window(sample: Binned, element: str, line: str) -> tuple[int, int]:
    """Inclusive bin window of +/- one FWHM around an emission line."""
    energy = emission_line(element, line).energy_ev
    half = fwhm_ev(energy)
    calibration = sample.calibration
    lo = max(0, calibration.bin_of(energy - half))
    hi = min(sample.bins - 1, calibration.bin_of(energy + half))
    return lo, hi
