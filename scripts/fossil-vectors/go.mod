module herald/fossil-vectors

go 1.22

require github.com/shadowspore/fossil-delta v0.0.0-20241213113458-1d797d70cbe3 // indirect
