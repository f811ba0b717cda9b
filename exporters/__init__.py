"""Checkpoint → ONNX exporter (``darkpose-export``).  Uses torch; never imported by service/."""

from darkpose.exporters.export import ExportReport, export_decoder, export_onnx, make_spec

__all__ = ["ExportReport", "export_decoder", "export_onnx", "make_spec"]
