//! Shared by build.rs and emu/build.rs: the kernel entry points a `.cu` file
//! declares with `RNN_KERNEL(name, Params)` or `RNN_PERSISTENT_KERNEL(name, Params)`.

pub fn entry_points(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            line.strip_prefix("RNN_KERNEL(")
                .or_else(|| line.strip_prefix("RNN_PERSISTENT_KERNEL("))
        })
        .filter_map(|rest| rest.split(',').next())
        .map(|name| name.trim().to_string())
        .collect()
}
