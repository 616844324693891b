//! The documentation's links: `scripts/check-links` (which `scripts/test`
//! runs on every tracked Markdown file) finds each kind of broken one,
//! and none in the tree.

use std::process::Command;

use fm_e2e::*;

#[test]
fn check_links_finds_a_missing_file_and_anchors_no_heading_makes() {
    let dir = scratch();
    std::fs::write(
        dir.path().join("a.md"),
        "# Title\n## Parallel workers (`workers = N`, `--workers N`)\n## Same\n## Same\n\
         [ok](#parallel-workers-workers--n---workers-n) [second](#same-1) [other](b.md#there)\n\
         [bad](#nowhere) [gone](missing.md) [web](https://example.org/#x) [badb](b.md#not-there)\n\
         ```\n[fenced](#ignored)\n```\n`[code](#ignored)`\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.md"), "# There\n").unwrap();
    let checked = run(Command::new(workspace_root().join("scripts/check-links"))
        .current_dir(dir.path())
        .args(["a.md", "b.md"]));
    assert_eq!(checked.code(), 1, "{checked:#?}");
    assert_eq!(
        checked.stdout.lines().collect::<Vec<_>>(),
        [
            "a.md:6: #nowhere: no heading makes #nowhere",
            "a.md:6: missing.md: no such file",
            "a.md:6: b.md#not-there: no heading makes #not-there",
        ],
        "{checked:#?}"
    );
}

#[test]
fn no_link_in_the_tree_is_broken() {
    let checked =
        run(Command::new(workspace_root().join("scripts/check-links"))
            .current_dir(workspace_root()));
    assert_eq!(checked.code(), 0, "{checked:#?}");
}
