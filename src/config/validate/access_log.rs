//! `[access_log]`: present = on; `path` is "stdout" (the default), "stderr"
//! or a file (relative to the config file's folder, whose folder must exist:
//! the file is created when opened, its folder is not); `format` is JSON (the
//! default) or combined.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::ctx::Ctx;
use super::raw::{RawAccessLog, RawAccessLogFormat};
use super::values::non_empty_path;
use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

/// `[access_log]`: present = on; `path` defaults to stdout, `format` to JSON.
/// A file's folder must exist (the file itself is created when opened).
pub(super) fn access_log(cx: &mut Ctx, raw: &Spanned<RawAccessLog>) -> AccessLogConfig {
    let format = match raw.get_ref().format {
        Some(RawAccessLogFormat::Combined) => AccessLogFormat::Combined,
        Some(RawAccessLogFormat::Json) | None => AccessLogFormat::Json,
    };
    let target = match &raw.get_ref().path {
        None => AccessLogTarget::Stdout,
        Some(p) if p.get_ref() == "stdout" => AccessLogTarget::Stdout,
        Some(p) if p.get_ref() == "stderr" => AccessLogTarget::Stderr,
        Some(p) => {
            let base = cx.base.clone();
            cx.check(p, "access_log.path", |s| access_log_file(s, &base))
                .map_or(AccessLogTarget::Stdout, AccessLogTarget::File)
        }
    };
    AccessLogConfig { target, format }
}

fn access_log_file(s: &str, base: &Path) -> Result<PathBuf, String> {
    let path = non_empty_path(s, base)?;
    if path.is_dir() {
        return Err(format!("{} is a folder; name a file", path.display()));
    }
    match path.parent() {
        Some(dir) if !dir.is_dir() => Err(format!(
            "the folder {} does not exist (the log file is created, its folder is not)",
            dir.display()
        )),
        _ => Ok(path),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{AccessLogFormat, AccessLogTarget, Config};

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml_str(text, Path::new("/etc/switchyard/switchyard.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_is_off_and_an_empty_table_is_json_to_stdout() {
        assert_eq!(load("").unwrap().access_log, None);
        let on = load("[access_log]\n").unwrap().access_log.unwrap();
        assert_eq!(on.target, AccessLogTarget::Stdout);
        assert_eq!(on.format, AccessLogFormat::Json);
    }

    #[test]
    fn paths_are_relative_to_the_config_folder() {
        let log = load("[access_log]\npath = \"stderr\"\nformat = \"combined\"\n")
            .unwrap()
            .access_log
            .unwrap();
        assert_eq!(log.target, AccessLogTarget::Stderr);
        assert_eq!(log.format, AccessLogFormat::Combined);
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("switchyard.toml");
        let config = Config::from_toml_str("[access_log]\npath = \"a.log\"\n", &origin).unwrap();
        let target = config.access_log.unwrap().target;
        assert_eq!(target, AccessLogTarget::File(dir.path().join("a.log")));
    }

    #[test]
    fn bad_values_are_errors_with_their_position() {
        let err = load("[access_log]\npath = \"/no/such/folder/a.log\"\n").unwrap_err();
        assert!(err.contains(":2:8: access_log.path:"), "{err}");
        let err = load("[access_log]\npath = \"\"\n").unwrap_err();
        assert!(
            err.contains("access_log.path") && err.contains("empty"),
            "{err}"
        );
        let err = load("[access_log]\npath = \"/tmp\"\n").unwrap_err();
        assert!(err.contains("is a folder"), "{err}");
        let err = load("[access_log]\nformat = \"xml\"\n").unwrap_err();
        assert!(
            err.contains(":2:") && err.contains("access_log.format"),
            "{err}"
        );
        let err = load("[access_log]\nbuffer = 1\n").unwrap_err();
        assert!(err.contains("access_log"), "{err}");
    }
}
