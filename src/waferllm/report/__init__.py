"""Layer 6: tables, plots and HTML reports of costed runs."""
