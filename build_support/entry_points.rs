//! Shared by build.rs and emu/build.rs: the kernel entry points a `.cu` file
//! declares with `RNN_KERNEL(name, Params)`.

pub fn entry_points(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("RNN_KERNEL("))
        .filter_map(|rest| rest.split(',').next())
        .map(|name| name.trim().to_string())
        .collect()
}
