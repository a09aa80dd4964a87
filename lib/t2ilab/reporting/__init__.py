"""Report notebooks per milestone: running them with papermill, the index and tables for reading."""
