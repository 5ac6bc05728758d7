//! Unit tests for header validation: one per rejection reason. (Being written.)
