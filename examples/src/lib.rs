//! Runnable programs that show Ordo at work; see `src/bin/`.
