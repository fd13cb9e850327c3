"""A searchable image collection on disk: model, codes, paths and thumbnails, written in generations."""
