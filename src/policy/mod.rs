//! Policy files and the decision engine (being written; see issue 4).
