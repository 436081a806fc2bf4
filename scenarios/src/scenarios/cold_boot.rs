//! Placeholder.
use super::ScenarioInfo;
use crate::Result;
use crate::report::{ScenarioReport, Size};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "cold-boot",
    incident: "",
    asserts: "",
};

pub async fn run(_size: Size) -> Result<ScenarioReport> {
    Err(crate::ScenarioError::Setup("not yet".into()))
}
