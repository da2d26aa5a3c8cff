//! `emulate smoke` below its flags (the command itself is `cli::smoke`): the checks file and
//! expectations, the scenarios that send checks' requests and prove what they claim, and the
//! report in its text, JSON and JUnit forms.

pub mod checks;
pub mod report;
pub mod scenarios;
