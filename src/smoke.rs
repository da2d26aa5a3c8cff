//! The pure parts of `emulate smoke` (the command itself is `cli::smoke`): the checks file
//! and expectations, and the report in its text, JSON and JUnit forms.

pub mod checks;
pub mod report;
