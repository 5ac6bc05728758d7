//! The write-ahead journal: two rings (prepares and their redundant headers) and the recovery
//! decision table. (Being written.)
