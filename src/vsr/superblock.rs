//! The superblock: four redundant copies, atomic update, quorum open. (Being written.)
