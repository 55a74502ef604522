namespace Ferry.Linux;
