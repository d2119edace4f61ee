// Intentionally empty: the build-dependencies exist only for feature unification.
fn main() {}
