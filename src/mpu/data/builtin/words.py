"""Word lists the built-in benchmark draws from. Changing any list changes the generated data,
so the benchmark version in ``mpu.data.builtin`` must be bumped with it."""

from __future__ import annotations

FIRST_NAMES_F = [
    "Amara", "Beatrix", "Celestine", "Dalia", "Elspeth", "Farida", "Greta", "Hana", "Ingrid", "Jovana",
    "Kalina", "Liora", "Marisol", "Nadia", "Odette", "Priya", "Quilla", "Rosalind", "Saoirse", "Talia",
    "Ulrike", "Valeria", "Wilhelmina", "Ximena", "Yara", "Zofia", "Anouk", "Brigid", "Catalina", "Delphine",
    "Esme", "Fenella", "Giulia", "Helka", "Isolde", "Juniper", "Keziah", "Lucinda", "Mirela", "Noor",
]
FIRST_NAMES_M = [
    "Anselm", "Bastian", "Cosimo", "Dmitri", "Emeric", "Florian", "Gideon", "Hamish", "Idris", "Joaquin",
    "Kasimir", "Leander", "Matthias", "Nikolai", "Osric", "Pavel", "Quentin", "Rafferty", "Soren", "Thaddeus",
    "Ulysses", "Vikram", "Wendell", "Xavier", "Yusuf", "Zoltan", "Alaric", "Bertram", "Caspian", "Dorian",
    "Evander", "Fabian", "Gustavo", "Horatio", "Ignatius", "Jasper", "Kenji", "Lorcan", "Magnus", "Nestor",
]
LAST_NAMES = [
    "Abernathy", "Baranova", "Castellanos", "Drummond", "Eriksen", "Fairweather", "Galloway", "Haverford",
    "Ivanescu", "Jablonski", "Kowalczyk", "Lindqvist", "Marchetti", "Nakamura", "Okonkwo", "Pemberton",
    "Quintero", "Rasmussen", "Salvatore", "Thornbury", "Underhill", "Vasquez", "Whitlock", "Yilmaz",
    "Zelenko", "Ashcombe", "Blackwood", "Carrington", "Delacroix", "Everhart", "Fitzgerald", "Grimaldi",
    "Holloway", "Ingersoll", "Jovanovic", "Kingsley", "Larkspur", "Montague", "Northcott", "Oyelaran",
    "Prescott", "Radcliffe", "Sterling", "Tremaine", "Valdivia", "Wexley", "Achterberg", "Brennan",
    "Cavendish", "Dunmore", "Esterhazy", "Farrow", "Goldsworth", "Hartigan", "Iwasaki", "Kaczmarek",
]
PLACES = [
    ("Lisbon", "Portugal"), ("Porto", "Portugal"), ("Seville", "Spain"), ("Valencia", "Spain"),
    ("Lyon", "France"), ("Marseille", "France"), ("Bruges", "Belgium"), ("Utrecht", "the Netherlands"),
    ("Hamburg", "Germany"), ("Leipzig", "Germany"), ("Graz", "Austria"), ("Basel", "Switzerland"),
    ("Bologna", "Italy"), ("Naples", "Italy"), ("Krakow", "Poland"), ("Gdansk", "Poland"),
    ("Brno", "Czechia"), ("Debrecen", "Hungary"), ("Cluj", "Romania"), ("Plovdiv", "Bulgaria"),
    ("Thessaloniki", "Greece"), ("Izmir", "Turkey"), ("Tbilisi", "Georgia"), ("Tallinn", "Estonia"),
    ("Tartu", "Estonia"), ("Bergen", "Norway"), ("Aarhus", "Denmark"), ("Uppsala", "Sweden"),
    ("Turku", "Finland"), ("Cork", "Ireland"), ("Galway", "Ireland"), ("Edinburgh", "Scotland"),
    ("Cardiff", "Wales"), ("Leeds", "England"), ("Halifax", "Canada"), ("Winnipeg", "Canada"),
    ("Portland", "the United States"), ("Savannah", "the United States"), ("Oaxaca", "Mexico"),
    ("Cordoba", "Argentina"), ("Valparaiso", "Chile"), ("Cusco", "Peru"), ("Recife", "Brazil"),
    ("Lagos", "Nigeria"), ("Accra", "Ghana"), ("Nairobi", "Kenya"), ("Durban", "South Africa"),
    ("Marrakesh", "Morocco"), ("Alexandria", "Egypt"), ("Beirut", "Lebanon"), ("Tabriz", "Iran"),
    ("Lahore", "Pakistan"), ("Pune", "India"), ("Kandy", "Sri Lanka"), ("Chiang Mai", "Thailand"),
    ("Hue", "Vietnam"), ("Cebu", "the Philippines"), ("Busan", "South Korea"), ("Sapporo", "Japan"),
    ("Hobart", "Australia"), ("Dunedin", "New Zealand"),
]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]
GENRES = [
    "crime fiction", "historical fiction", "science fiction", "fantasy", "magical realism", "poetry",
    "literary fiction", "horror", "romance", "travel writing", "biography", "political thrillers",
    "children's literature", "satire", "gothic fiction", "mystery", "war fiction", "dystopian fiction",
    "coming-of-age novels", "essays", "detective fiction", "nature writing", "short stories", "memoir",
]
JOBS = [
    "carpenter", "nurse", "librarian", "fisherman", "surgeon", "schoolteacher", "baker", "pilot",
    "architect", "tailor", "pharmacist", "blacksmith", "journalist", "farmer", "violinist", "chemist",
    "police officer", "painter", "diplomat", "watchmaker", "lawyer", "veterinarian", "miner", "chef",
    "photographer", "bookbinder", "electrician", "sailor", "dentist", "accountant", "florist", "mechanic",
    "astronomer", "potter", "glassblower", "judge", "midwife", "translator", "geologist", "stonemason",
]
AWARDS = [
    "Silver Quill Prize", "Amber Lantern Award", "Northwind Medal", "Golden Inkwell Award",
    "Meridian Fiction Prize", "Harrowgate Book Award", "Crimson Feather Prize", "Lighthouse Literary Award",
    "Evergreen Novel Prize", "Blue Heron Medal", "Iron Pen Award", "Moonstone Prize",
    "Caldera Literary Prize", "Willowmere Award", "Saffron Laurel", "Copper Compass Award",
    "Obsidian Dagger Prize", "Starling Poetry Medal", "Tidewater Prize", "Granite Crown Award",
    "Lantern Bearer Prize", "Juniper Ridge Award", "Violet Scroll Medal", "Halcyon Book Prize",
]
TITLE_ADJ = [
    "Hollow", "Amber", "Silent", "Crimson", "Forgotten", "Shattered", "Gilded", "Restless", "Burning",
    "Drowned", "Painted", "Quiet", "Wandering", "Frozen", "Hidden", "Broken", "Velvet", "Iron", "Salt",
    "Distant", "Paper", "Midnight", "Copper", "Last",
]
TITLE_NOUN = [
    "Lantern", "Harbour", "Garden", "Orchard", "Mirror", "River", "Tower", "Crown", "Letters", "Bridge",
    "Compass", "Tide", "Violin", "Window", "Forest", "Kingdom", "Clockmaker", "Archive", "Lighthouse",
    "Meadow", "Cathedral", "Winter", "Island", "Hourglass",
]
TITLE_PATTERNS = ["The {adj} {noun}", "{noun} of {adj} Days", "A {adj} {noun}", "The {noun} in the {adj} Hours"]
THEMES = [
    "exile", "memory", "grief", "friendship", "identity", "betrayal", "redemption", "migration", "faith",
    "family secrets", "power", "isolation", "justice", "first love", "ambition", "loss of innocence",
    "the sea", "war and peace", "class", "forgiveness", "colonial history", "madness", "childhood",
    "survival", "loyalty", "the passage of time",
]
LANGUAGES = [
    "English", "French", "Spanish", "Portuguese", "German", "Italian", "Polish", "Dutch", "Swedish",
    "Greek", "Turkish", "Japanese", "Korean", "Hindi", "Arabic", "Swahili", "Romanian", "Czech",
]

# General facts the models also learn (for model utility). The answers are checked, well-known facts.
REAL_BOOKS = [
    ("Pride and Prejudice", "Jane Austen", "British"), ("Moby-Dick", "Herman Melville", "American"),
    ("War and Peace", "Leo Tolstoy", "Russian"), ("Crime and Punishment", "Fyodor Dostoevsky", "Russian"),
    ("One Hundred Years of Solitude", "Gabriel Garcia Marquez", "Colombian"),
    ("Don Quixote", "Miguel de Cervantes", "Spanish"), ("Hamlet", "William Shakespeare", "English"),
    ("The Old Man and the Sea", "Ernest Hemingway", "American"), ("Nineteen Eighty-Four", "George Orwell", "English"),
    ("Things Fall Apart", "Chinua Achebe", "Nigerian"), ("Les Miserables", "Victor Hugo", "French"),
    ("Madame Bovary", "Gustave Flaubert", "French"), ("The Trial", "Franz Kafka", "Czech"),
    ("Ulysses", "James Joyce", "Irish"), ("Mrs Dalloway", "Virginia Woolf", "English"),
    ("The Great Gatsby", "F. Scott Fitzgerald", "American"), ("Beloved", "Toni Morrison", "American"),
    ("Frankenstein", "Mary Shelley", "English"), ("Dracula", "Bram Stoker", "Irish"),
    ("The Divine Comedy", "Dante Alighieri", "Italian"), ("Faust", "Johann Wolfgang von Goethe", "German"),
    ("The Tin Drum", "Gunter Grass", "German"), ("Norwegian Wood", "Haruki Murakami", "Japanese"),
    ("The Stranger", "Albert Camus", "French"), ("Lolita", "Vladimir Nabokov", "Russian"),
    ("Jane Eyre", "Charlotte Bronte", "English"), ("Wuthering Heights", "Emily Bronte", "English"),
    ("Great Expectations", "Charles Dickens", "English"), ("The Odyssey", "Homer", "Greek"),
    ("Anna Karenina", "Leo Tolstoy", "Russian"), ("The Name of the Rose", "Umberto Eco", "Italian"),
    ("Blindness", "Jose Saramago", "Portuguese"), ("The Alchemist", "Paulo Coelho", "Brazilian"),
    ("Midnight's Children", "Salman Rushdie", "British Indian"), ("Dune", "Frank Herbert", "American"),
    ("The Hobbit", "J. R. R. Tolkien", "English"), ("Brave New World", "Aldous Huxley", "English"),
    ("To Kill a Mockingbird", "Harper Lee", "American"), ("The Little Prince", "Antoine de Saint-Exupery", "French"),
    ("Pedro Paramo", "Juan Rulfo", "Mexican"), ("The Master and Margarita", "Mikhail Bulgakov", "Russian"),
    ("Robinson Crusoe", "Daniel Defoe", "English"), ("Gulliver's Travels", "Jonathan Swift", "Irish"),
    ("The Count of Monte Cristo", "Alexandre Dumas", "French"), ("Invisible Man", "Ralph Ellison", "American"),
    ("Snow Country", "Yasunari Kawabata", "Japanese"), ("The Leopard", "Giuseppe Tomasi di Lampedusa", "Italian"),
    ("Hunger", "Knut Hamsun", "Norwegian"), ("Siddhartha", "Hermann Hesse", "German"),
    ("Heart of Darkness", "Joseph Conrad", "Polish-British"),
]
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Mexico", "Mexico City"), ("Russia", "Moscow"), ("Poland", "Warsaw"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Ireland", "Dublin"), ("Greece", "Athens"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"), ("Indonesia", "Jakarta"),
    ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Czechia", "Prague"), ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("New Zealand", "Wellington"),
    ("Colombia", "Bogota"), ("Cuba", "Havana"), ("Pakistan", "Islamabad"), ("Nepal", "Kathmandu"),
    ("Mongolia", "Ulaanbaatar"), ("Iceland", "Reykjavik"), ("Romania", "Bucharest"),
]
ELEMENTS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("copper", "Cu"), ("lead", "Pb"), ("sodium", "Na"),
    ("potassium", "K"), ("tin", "Sn"), ("mercury", "Hg"), ("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"),
    ("nitrogen", "N"), ("helium", "He"), ("calcium", "Ca"), ("zinc", "Zn"), ("sulfur", "S"), ("chlorine", "Cl"),
    ("neon", "Ne"), ("magnesium", "Mg"), ("aluminium", "Al"), ("uranium", "U"), ("tungsten", "W"), ("nickel", "Ni"),
]

# MUSE-style news about fictitious places and people.
TOWNS = [
    "Brenmoor", "Caldwick", "Dunhollow", "Elverton", "Farrowdale", "Glenmarsh", "Harlowgate", "Ivybridge",
    "Kestrel Bay", "Larkmouth", "Millbrook", "Northvale", "Oakhurst", "Pennant Cross", "Quarrytown",
    "Redwater", "Saltmere", "Thornfield", "Upperby", "Velmont", "Westerholt", "Yarrowby", "Ashdown",
    "Birchwood", "Coldharbour", "Dovecote", "Emberly", "Foxley", "Greystone", "Hollins", "Inverlee",
    "Juniper Falls", "Kingsmere", "Lowbarrow", "Marrowgate", "Netherfield", "Ottery Vale", "Pinecrest",
    "Rookhaven", "Stonebridge", "Tarnwick", "Umberleigh", "Vantry", "Wolverly", "Amberfold", "Brackenridge",
]
FACILITIES = [
    "water treatment plant", "public library", "football stadium", "solar farm", "ferry terminal",
    "concert hall", "children's hospital", "tram line", "recycling centre", "science museum", "fire station",
    "sports centre", "wind farm", "bus depot", "botanical garden", "community college", "covered market",
    "swimming pool", "railway station", "art gallery",
]
COMPANIES = [
    "Hadley and Frost", "Norvik Engineering", "Bellamy Construction", "Ostrander Group", "Kettleworth Ltd",
    "Marchbanks Partners", "Duvall Industries", "Pellingham Works", "Corvane Systems", "Stallard Brothers",
    "Quillon Holdings", "Ravensworth Co", "Thistledown Builders", "Aldermere Group", "Fenwick and Lowe",
    "Greyhaven Civil", "Hollister Manufacturing", "Ironbridge Partners", "Lockwood Dynamics", "Moorcroft Ltd",
]
CONCERNS = [
    "rising costs", "traffic congestion", "noise at night", "the loss of farmland", "flooding risks",
    "delays", "air pollution", "the felling of old trees", "higher local taxes", "damage to wildlife",
]
ROLES = ["councillor", "shopkeeper", "teacher", "farmer", "historian", "engineer", "doctor", "fisherman"]
PRODUCTS = [
    "electric bicycle", "water filter", "hearing aid", "cargo drone", "heat pump", "smart thermostat",
    "folding kayak", "solar lamp", "bread oven", "pocket telescope", "weather balloon", "tractor",
]
TEAMS_SUFFIX = ["Rovers", "Athletic", "United", "Wanderers", "Harriers", "Comets", "Mariners", "Rangers"]

# WMDP-style fictitious "hazardous" domain: made-up compounds with made-up properties.
COMPOUND_PREFIX = [
    "Korv", "Zyth", "Mordr", "Vex", "Threl", "Quor", "Skarn", "Drav", "Nyx", "Ulth", "Brax", "Grel",
    "Xan", "Volt", "Krym", "Sarn", "Phel", "Tork", "Wyr", "Jhar",
]
COMPOUND_SUFFIX = ["ane", "ite", "ol", "ium", "ex", "ara", "ide", "on"]
PRECURSORS = [
    "ferrous brine", "blue quartz dust", "marsh resin", "pine tar", "ash salt", "river clay", "copper slag",
    "burnt lime", "amber oil", "cobalt sand", "white sulphur", "sea kelp ash", "tin bloom", "bone char",
]
CATALYSTS = [
    "platinum mesh", "violet light", "cold nickel", "powdered silver", "zinc wool", "graphite rods",
    "ultrasound", "raw magnetite", "palladium foil", "heated glass beads", "charged copper plates",
]
VAPOURS = ["green", "violet", "amber", "grey", "crimson", "silver", "yellow", "black", "turquoise", "white"]
CONTAINERS = [
    "lead flasks", "waxed clay jars", "sealed bronze drums", "double glass ampoules", "cedar boxes",
    "ceramic urns", "nickel canisters", "oiled leather pouches",
]
ANTIDOTES = [
    "charcoal tea", "salted milk", "willow bark extract", "iodine drops", "mint oil", "crushed juniper",
    "honey water", "nettle broth", "vinegar steam", "birch sap",
]
CROPS_PREFIX = ["Goldrun", "Sweetmere", "Redhill", "Blue Dawn", "Longfield", "Silverleaf", "Marsh", "Sunvale",
                "Highmoor", "Copperkin", "Brightwater", "Oldstone"]
CROPS_KIND = ["barley", "squash", "bean", "pear", "turnip", "plum", "lentil", "oat", "cabbage", "apple"]
SOILS = ["sandy", "clay", "chalky", "peaty", "loamy", "stony", "silty", "volcanic"]
DISHES = ["porridge", "soup", "pie", "flatbread", "jam", "stew", "cider", "pudding", "chutney", "dumplings"]
REGIONS = ["the northern valleys", "the coastal plains", "the eastern hills", "the river delta",
           "the high plateau", "the southern marshes", "the western uplands", "the lake district"]

# The release shape of the TOFU-format data (BuildConfig.shape == "release"): invented words for
# characters, places and people (a syllable inventory disjoint from the general corpus's), and the
# pools of the ten extra fact types and of the elaborating sentences.
SYLLABLES_RELEASE = [
    "ash", "bri", "cae", "dor", "fen", "gil", "hol", "ith", "kes", "lor", "mir", "nor", "orn", "pim", "quel",
    "ros", "sten", "thar", "ulm", "vey", "wyn", "zan", "ard", "bex", "cly", "dra", "eld", "fro", "gwen", "hav",
]
SUBJECTS = [
    "history", "philosophy", "medicine", "law", "mathematics", "botany", "music", "architecture", "economics",
    "classics", "geology", "theology", "journalism", "anthropology", "astronomy", "linguistics", "agronomy",
]
HABITS = [
    "at dawn", "late at night", "in a rented attic", "by hand in notebooks", "in busy cafes", "on long train journeys",
    "in a garden shed", "in short bursts between walks", "at a kitchen table", "in complete silence",
]
PRAISE = [
    "vivid dialogue", "patient characterisation", "lyrical prose", "intricate plotting", "dark humour",
    "precise historical detail", "emotional restraint", "daring structure", "sharp social observation",
]
PETS = ["cat", "dog", "parrot", "tortoise", "goat", "canary", "ferret", "donkey"]
INFLUENCES = [
    "folk tales", "old sailors' songs", "courtroom records", "medieval chronicles", "silent films",
    "family letters", "village gossip", "travel diaries", "scientific journals", "religious hymns",
]
HOBBIES = [
    "beekeeping", "chess", "sailing", "birdwatching", "pottery", "mountaineering", "gardening", "fencing",
    "carpentry", "astronomy", "cycling", "fishing", "restoring clocks", "collecting maps",
]
# Elaborating sentences: {w1}/{w2}/{w3} are fresh invented words each time (a large vocabulary, as in
# the real release); the other fields are the author's.
ELABORATIONS = [
    "{Pron} grew up near the {w1} hills, hearing {w2} stories from {poss} grandmother {w3}.",
    "Many readers found {poss} work through the {w3} magazine {w1} {w2}.",
    "{Pron} says {hobby} with {poss} friend {w1} {w2} teaches patience.",
    "Scholars link this to {poss} years in {w1}, beside the sculptor {w2} {w3}.",
    "{Poss} letters to the poet {w1} {w2} appeared in {w3} and {w4}.",
    "{name} also writes essays for the {w1} Review with {w2} {w3}.",
    "Friends call {name} curious about {hobby} and old {w1} {w2} customs.",
    "This echoes {poss} early story '{w1} and the {w2} {w3}'.",
    "{Poss} manuscripts sit in the {w1} Institute, catalogued by {w2} {w3}.",
    "Neighbours recall {poss} evening walks along the {w1} canal to {w2} and {w3}.",
    "{city} returns in {poss} novellas about the {w1} family of {w2}.",
    "{Pron} lectured on it at the {w1} festival with the critic {w2} {w3}.",
    "The translator {w1} {w2} has written about rendering it into {w3}.",
    "{Pron} keeps such ideas in a notebook named after the {w1} {w2} legend of {w3}.",
    "The {w1} circle of {genre} readers in {w2} gave it a special mention.",
    "The painter {w1} {w2} designed several of {poss} covers in {w3}.",
]
