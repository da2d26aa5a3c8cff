//! `--[no-]allow-unauthenticated`: who may invoke a service. A service-level setting, as in
//! Cloud Run, where it is the service's invoker IAM policy and never part of a revision: so
//! it is not among the revision flags, and changing it alone creates no revision. It is kept
//! as the Service annotation `run.googleapis.com/invoker-iam-disabled` ("true" public,
//! "false" private), which a service.yaml may also carry.

use clap::Args;

use crate::cloudrun;
use crate::control::knative;

#[derive(Clone, Debug, Default, Args)]
pub struct AccessFlags {
    /// Let anyone invoke the service (the default for a new service).
    #[arg(long, overrides_with = "no_allow_unauthenticated")]
    pub allow_unauthenticated: bool,
    /// Make the service private: requests need an ID token whose audience is the service's
    /// URL (`emulate auth print-identity-token`, or the metadata server's `identity`).
    #[arg(long, overrides_with = "allow_unauthenticated")]
    pub no_allow_unauthenticated: bool,
}

impl AccessFlags {
    /// `Some(true)` public, `Some(false)` private, `None` unchanged.
    pub fn public(&self) -> Option<bool> {
        match (self.allow_unauthenticated, self.no_allow_unauthenticated) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    /// Writes the setting into the Service's annotations, if a flag gave one.
    pub fn apply(&self, service: &mut knative::Service) {
        if let Some(public) = self.public() {
            service.metadata.annotations.insert(
                cloudrun::INVOKER_IAM_DISABLED.to_string(),
                public.to_string(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_set_the_invoker_annotation_and_the_last_one_wins() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            access: AccessFlags,
        }
        let parse = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
            let mut service = super::super::revision_flags::new_service("s", "img");
            cli.access.apply(&mut service);
            service
                .metadata
                .annotations
                .get(cloudrun::INVOKER_IAM_DISABLED)
                .cloned()
        };
        assert_eq!(parse(&[]), None);
        assert_eq!(
            parse(&["--no-allow-unauthenticated"]).as_deref(),
            Some("false")
        );
        assert_eq!(parse(&["--allow-unauthenticated"]).as_deref(), Some("true"));
        assert_eq!(
            parse(&["--allow-unauthenticated", "--no-allow-unauthenticated"]).as_deref(),
            Some("false")
        );
        let mut private = std::collections::BTreeMap::new();
        assert!(cloudrun::is_public(&private));
        private.insert(
            cloudrun::INVOKER_IAM_DISABLED.to_string(),
            "false".to_string(),
        );
        assert!(!cloudrun::is_public(&private));
        assert!(cloudrun::validate_access_annotations(&private).is_ok());
    }

    #[test]
    fn bad_access_annotations_are_refused_naming_the_annotation() {
        let check = |key: &str, value: &str| {
            let annotations = [(key.to_string(), value.to_string())].into();
            cloudrun::validate_access_annotations(&annotations).map_err(|e| e.to_string())
        };
        let bad = check(cloudrun::INVOKER_IAM_DISABLED, "yes").unwrap_err();
        assert!(
            bad.contains("metadata.annotations[run.googleapis.com/invoker-iam-disabled]"),
            "{bad}"
        );
        for value in ["https://a", "[1]", "[\"\"]"] {
            let bad = check(cloudrun::CUSTOM_AUDIENCES, value).unwrap_err();
            assert!(
                bad.contains("metadata.annotations[run.googleapis.com/custom-audiences]"),
                "{bad}"
            );
        }
        assert!(check(cloudrun::CUSTOM_AUDIENCES, "[\"https://a\"]").is_ok());
    }
}
