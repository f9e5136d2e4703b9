"""The medical lookup client: a query's neighbours grouped by study and series, as HTML or JSON."""
