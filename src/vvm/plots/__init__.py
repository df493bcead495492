from vvm.plots.heatmap import draw_heatmap, heatmap_figure, save_figure

__all__ = ["draw_heatmap", "heatmap_figure", "save_figure"]
