"""The report's figures: what each draws, from which file, with which caption.

Each :class:`FigureSpec` names the result files it needs (``results/<name>.nc``);
a spec whose files are absent (an analysis that was not run) is left out. Captions
say what is plotted, on what data, with what estimator, and where the data lives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import xarray as xr
from matplotlib.figure import Figure

Datasets = dict[str, xr.Dataset]

SECTIONS = (
    ("stats", "Statistical analysis: neurons, bowties and mutual information"),
    ("similarity", "Similarity or dissimilarity? Query-key weights and embedding angles"),
)


@dataclass(frozen=True)
class FigureSpec:
    section: str
    slug: str
    title: str
    needs: tuple[str, ...]
    draw: Callable[[Datasets], Figure]
    caption: Callable[[Datasets, dict], str]
    #: drawn only when the result holds a control along ``model``
    control_only: bool = False

    def available(self, datasets: Datasets) -> bool:
        if not all(name in datasets for name in self.needs):
            return False
        return not self.control_only or has_control(datasets[self.needs[0]])


def trained(ds: xr.Dataset) -> xr.Dataset:
    """The trained model's slice of a result that may hold a control along ``model``."""
    return ds.sel(model="trained") if "model" in ds.dims else ds


def has_control(ds: xr.Dataset) -> bool:
    return "model" in ds.dims and ds.sizes["model"] > 1


def _n_images(manifest: dict) -> str:
    images = manifest["images"]
    kind = "built-in demo crops (not ImageNet)" if images.get("demo") else images["source"]
    return f"{manifest.get('n_images_counted', images['n_selected'])} images ({kind})"


def _mi_estimator(ds: xr.Dataset) -> str:
    bins = ds.sizes.get("bin_x", "?")
    return (f"plug-in MI of {bins}x{bins} equal-frequency (quantile) bins with the "
            "Miller-Madow correction and bin-width extrapolation (2 I_B - I_B/2), in nats")


def _control_note(ds: xr.Dataset) -> str:
    return (" The random-init control is drawn in grey or dashed." if has_control(ds) else
            " No control was run (add <code>--control random-init</code>).")


# -- statistical analysis ------------------------------------------------------------------
def _draw_mi(datasets: Datasets) -> Figure:
    from vitprobe.plots.neurons import plot_mi_vs_distance

    return plot_mi_vs_distance(datasets["mi"])


def _caption_mi(datasets: Datasets, manifest: dict) -> str:
    ds = datasets["mi"]
    return (
        "Mean mutual information between the spatially central neuron of each channel and "
        "the same channel at every other patch, against distance from the centre (patch units, "
        "rounded), one line per layer, MHA (attention output) and MLP sublayers side by side "
        f"(poster Fig. 4). {ds.sizes['channel']} channels per sublayer over {_n_images(manifest)}; "
        f"{_mi_estimator(ds)}. Error bars: split-half (even/odd images) standard error; grey "
        "band: the shuffled-pair null (x from one image, y from another)." + _control_note(ds)
    )


def control(ds: xr.Dataset) -> xr.Dataset:
    """The control's slice (the first model that is not ``trained``)."""
    return ds.sel(model=next(v for v in ds["model"].values if v != "trained"))


def _draw_bowtie_rows(sublayer: str, pick=trained) -> Callable[[Datasets], Figure]:
    def draw(datasets: Datasets) -> Figure:
        from vitprobe.plots.neurons import plot_bowtie_rows

        return plot_bowtie_rows(pick(datasets["mi"]), sublayer)

    return draw


def _caption_bowtie_control(sublayer: str) -> Callable[[Datasets, dict], str]:
    name = {"attn": "MHA", "mlp": "MLP"}[sublayer]

    def caption(datasets: Datasets, manifest: dict) -> str:
        return (f"The same bowtie rows as above for the random-init control ({name}), "
                f"{_n_images(manifest)}: what the architecture alone does to the "
                "dependence between neighbouring neurons.")

    return caption


def _caption_bowtie_rows(sublayer: str) -> Callable[[Datasets, dict], str]:
    name = {"attn": "MHA", "mlp": "MLP"}[sublayer]

    def caption(datasets: Datasets, manifest: dict) -> str:
        return (
            f"Joint conditional statistics of a central {name} neuron (x) and a neuron of the "
            "same channel at growing distance (y), one row per layer (poster Fig. 3). Each panel "
            "is a bowtie plot: the 2-D histogram of (x, y) with every x column normalised to "
            "its maximum, i.e. p(y | x) up to scale, axes in activation units. A widening of "
            "the column with |x| (a bowtie) is dependence in variance even where the "
            f"correlation is zero. Trained model, {_n_images(manifest)}; "
            f"{datasets['mi'].sizes.get('bin_x', '?')} equal-frequency bins per neuron, the "
            "MI estimator's own (chosen so that cells hold enough images on average: more "
            "images give finer bowties)."
        )

    return caption


def _draw_distributions(datasets: Datasets) -> Figure:
    from vitprobe.plots.neurons import plot_activation_distributions

    return plot_activation_distributions(datasets["histograms"])


def _caption_distributions(datasets: Datasets, manifest: dict) -> str:
    return (
        "Distributions of single-neuron activations per layer (log density), each neuron "
        "standardised by its calibration mean and standard deviation and pooled over channels "
        "and positions; dashed: the standard normal. Heavier tails mean positive excess "
        f"kurtosis. {_n_images(manifest)}." + _control_note(datasets["histograms"])
    )


def _draw_kurtosis(datasets: Datasets) -> Figure:
    from vitprobe.plots.neurons import plot_kurtosis

    return plot_kurtosis(datasets["moments"])


def _caption_kurtosis(datasets: Datasets, manifest: dict) -> str:
    return (
        "Excess kurtosis (0 for a normal distribution) of every neuron (channel x position), "
        "per layer: median, quartiles and 5-95 % whiskers across neurons; moments accumulated "
        f"in float64 with Pebay's pairwise updates over {_n_images(manifest)}."
        + _control_note(datasets["moments"])
    )


# -- similarity or dissimilarity -------------------------------------------------------------
def _draw_qk_spectra(datasets: Datasets) -> Figure:
    from vitprobe.plots.qk import plot_qk_spectra

    return plot_qk_spectra(datasets["qk"])


def _caption_qk_spectra(datasets: Datasets, manifest: dict) -> str:
    return (
        "Spectra of M = W_Q W_K^T per head (poster Fig. 5), one row per layer: sorted "
        "eigenvalues of M_sym = (M + M^T)/2, the lambda of the +-i*lambda eigenvalue pairs of "
        "M_asym = (M - M^T)/2, and the singular values of M (their decay shows the rank), "
        "normalised by each head's largest singular value; thin lines are heads, bold the "
        "median; grey: the random-init model of the same architecture. Computed exactly from "
        "the d_model x d_head factors; biases and LayerNorm excluded (as in Pan et al. 2024)."
    )


def _draw_qk_summary(datasets: Datasets) -> Figure:
    from vitprobe.plots.qk import plot_qk_summary

    return plot_qk_summary(datasets["qk"])


def _caption_qk_summary(datasets: Datasets, manifest: dict) -> str:
    return (
        "Per-layer summaries of M = W_Q W_K^T across heads (median and interquartile band): "
        "positive share of M_sym's spectrum (sum of positive over sum of absolute eigenvalues), "
        "symmetry score 2s - 1 with s = ||M_sym||_F^2 / ||M||_F^2 (Saponati et al. 2025), the "
        "singular-value-weighted cosine between paired left and right singular vectors "
        "(= trace(M) / nuclear norm; Pan et al. 2024), ||M_asym|| / ||M_sym||, effective and "
        "stable rank; grey: random init."
    )


def _draw_qk_intuition(datasets: Datasets) -> Figure:
    from vitprobe.plots.qk import plot_sym_asym_intuition

    return plot_sym_asym_intuition()


def _caption_qk_intuition(datasets: Datasets, manifest: dict) -> str:
    return ("What the two parts do to a pair of tokens (poster Fig. 6): x M_sym y^T is largest "
            "for similar x and y along M_sym's positive eigenvectors, while x M_asym y^T is zero "
            "for y = x and largest for y rotated by 90 degrees in one of M_asym's planes. "
            "Schematic; no data.")


def _draw_angle(kind: str) -> Callable[[Datasets], Figure]:
    def draw(datasets: Datasets) -> Figure:
        from vitprobe.plots import angles

        ds = datasets["angles"]
        if kind == "distributions":
            return angles.plot_angle_distributions(ds)
        if kind == "attention":
            return angles.plot_attention_vs_angle(ds)
        if "qk" in datasets:
            from vitprobe.attention import attach_qk

            ds = attach_qk(ds, datasets["qk"])
        return angles.plot_angle_summary(ds)

    return draw


def _caption_angle(kind: str) -> Callable[[Datasets, dict], str]:
    def caption(datasets: Datasets, manifest: dict) -> str:
        ds = datasets["angles"]
        embedding = ds.attrs.get("embedding", "ln1")
        what = {
            "distributions": "Distribution of the angle between the embeddings of every pair of "
                             "patch tokens (query i, key j != i) per layer: all pairs (baseline) "
                             "against the same pairs weighted by the attention A_ij they "
                             "exchange. Mass left of the baseline means attention to similar "
                             "patches, right of it (beyond 90 degrees) to dissimilar ones.",
            "attention": "Mean attention probability A_ij per angle bin, per layer: how much "
                         "a query gives a key at each embedding angle.",
            "summary": "Per-layer summaries: attention-weighted minus baseline mean angle, "
                       "share of attention mass above 90 degrees, and the correlation of "
                       "attention logits with cos(angle), next to the query-key weight measures "
                       "(positive share of M_sym, weighted singular-vector cosine, symmetry "
                       "score) to test the poster's link between them.",
        }[kind]
        return (f"{what} Embeddings as attention sees them (<code>{embedding}</code>); solid: "
                "raw, dashed: after removing the dataset's mean token (anisotropy). "
                f"{_n_images(manifest)}; prefix tokens excluded." + _control_note(ds))

    return caption


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("stats", "mi_vs_distance", "Mutual information against distance", ("mi",),
               _draw_mi, _caption_mi),
    FigureSpec("stats", "bowties_attn", "Bowties at growing distance: MHA", ("mi",),
               _draw_bowtie_rows("attn"), _caption_bowtie_rows("attn")),
    FigureSpec("stats", "bowties_mlp", "Bowties at growing distance: MLP", ("mi",),
               _draw_bowtie_rows("mlp"), _caption_bowtie_rows("mlp")),
    FigureSpec("stats", "bowties_attn_control", "Bowties of the random-init control: MHA",
               ("mi",), _draw_bowtie_rows("attn", control), _caption_bowtie_control("attn"),
               control_only=True),
    FigureSpec("stats", "bowties_mlp_control", "Bowties of the random-init control: MLP",
               ("mi",), _draw_bowtie_rows("mlp", control), _caption_bowtie_control("mlp"),
               control_only=True),
    FigureSpec("stats", "activation_distributions", "Activation distributions",
               ("histograms",), _draw_distributions, _caption_distributions),
    FigureSpec("stats", "kurtosis", "Excess kurtosis per layer", ("moments",),
               _draw_kurtosis, _caption_kurtosis),
    FigureSpec("similarity", "qk_spectra", "Spectra of W_Q W_K^T", ("qk",),
               _draw_qk_spectra, _caption_qk_spectra),
    FigureSpec("similarity", "qk_summary", "Query-key weight measures per layer", ("qk",),
               _draw_qk_summary, _caption_qk_summary),
    FigureSpec("similarity", "qk_intuition", "Symmetric and antisymmetric parts", ("qk",),
               _draw_qk_intuition, _caption_qk_intuition),
    FigureSpec("similarity", "angle_distributions", "Embedding angles: all pairs vs attention",
               ("angles",), _draw_angle("distributions"), _caption_angle("distributions")),
    FigureSpec("similarity", "attention_vs_angle", "Attention against embedding angle",
               ("angles",), _draw_angle("attention"), _caption_angle("attention")),
    FigureSpec("similarity", "angle_summary", "Angles and weights per layer", ("angles",),
               _draw_angle("summary"), _caption_angle("summary")),
)

