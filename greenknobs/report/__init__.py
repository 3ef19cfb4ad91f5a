"""Everything people read: tables (pandas), plots (plotly, matplotlib) and, from the coming issues, the
analysis and the sustainability report. Takes ``TrialRow``s; never imports torch or transformers."""
