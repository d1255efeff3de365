//! Tests of the configuration layers.
