"""How well the MI bin edges fit the images, and where the null level lies, for run folders.

Quantile edges fixed on a calibration sample should split every neuron's values over
the whole run into equal shares (1/B per bin). This prints, per run folder, the spread
(standard deviation over bins, in percentage points) of the share of images in each of
the other neuron's bins, over every recorded (channel, position) neuron: the median
neuron, the 90th percentile and the worst; and the null level per sublayer (the MI of
pairs from independent images, in nats) next to the measured MI at the largest distance.

Usage: python benchmarks/calibration_quality.py RUN_DIR [RUN_DIR ...]
(``vitprobe run`` folders from before and after a change, e.g. the default run.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr


def main(folders: list[str]) -> None:
    for folder in folders:
        ds = xr.load_dataset(Path(folder) / "results" / "mi.nc", engine="h5netcdf")
        if "model" in ds.dims:
            ds = ds.isel(model=0)
        counts = ds["joint_counts"].astype("int64")  # (layer, sublayer, kept, position, bx, by)
        y = counts.sum("bin_x")
        share = y / y.sum("bin_y")
        spread = 100 * share.std("bin_y").values.ravel()
        bins = ds.sizes["bin_y"]
        print(f"{folder}: {bins} bins (ideal share {100 / bins:.1f}%), "
              f"{int(y.isel(layer=0, sublayer=0, kept=0, position=0).sum())} images")
        print(f"  bin share spread over neurons: median +-{np.median(spread):.1f}%, "
              f"90th percentile +-{np.percentile(spread, 90):.1f}%, worst +-{spread.max():.1f}%")
        curve = ds["mi_vs_distance"]
        far = int(curve["distance"].values[~np.all(np.isnan(curve.values), axis=(0, 1))].max())
        for sub in ds["sublayer"].values:
            null = float(ds["mi_null_level"].sel(sublayer=sub).mean())
            at_far = curve.sel(sublayer=sub, distance=far).values
            below = int((at_far < null).sum())
            print(f"  {sub}: null level {null:.4f} nats; MI at distance {far}: "
                  f"{np.nanmin(at_far):.4f}-{np.nanmax(at_far):.4f} nats "
                  f"({below} of {at_far.size} layers below the null)")


if __name__ == "__main__":
    main(sys.argv[1:] or ["vitprobe-out"])
