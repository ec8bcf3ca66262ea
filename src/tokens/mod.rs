//! Vonage Video client tokens (being written; see issue 3).
